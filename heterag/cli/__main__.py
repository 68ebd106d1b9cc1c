"""``python -m heterag.cli``: the ``heterag`` command."""

import sys

from heterag.cli.main import main

sys.exit(main())
