"""``python -m heterag.cli``: the ``heterag`` command."""

import sys

from heterag.cli import main

sys.exit(main())
