"""The heterag home directory: where collections, trained encoders and dequantised models live."""

from __future__ import annotations

import os
from pathlib import Path


def heterag_home() -> Path:
    """Where collections live: ``$HETERAG_HOME`` or ``~/.local/share/heterag``."""
    env = os.environ.get("HETERAG_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "heterag"
