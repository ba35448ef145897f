"""Where abstractcore keeps what it builds once per machine: converted models, row-padding
tables, compiled native code (one module with no imports of its own, so blas.py can use it
before anything else is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

#: Overrides the cache's location (default: ``$XDG_CACHE_HOME/abstractcore`` or
#: ``~/.cache/abstractcore``).
CACHE_ENV = "ABSTRACTCORE_CACHE_DIR"


def cache_root() -> Path:
    """``$ABSTRACTCORE_CACHE_DIR``, else ``abstractcore`` in the XDG cache directory."""
    if root := os.environ.get(CACHE_ENV):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "abstractcore"
