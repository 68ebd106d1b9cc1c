"""Web app: chat with a heterag collection (text and/or image questions, with sources) and manage it.

    python app.py                          # the built-in demos, on http://127.0.0.1:7860
    python app.py --collection NAME        # one of your collections
    python app.py --config app.yaml        # settings from YAML; see heterag/ui/config.py

The terminal chat is ``python -m heterag.ui.terminal``.
"""

import sys

from heterag.ui.server import main

if __name__ == "__main__":
    sys.exit(main())
