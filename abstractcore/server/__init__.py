"""An OpenAI- and Anthropic-compatible HTTP server over any provider (``abstractcore serve``).

>>> from abstractcore.server import create_app, serve
>>> app = create_app(lambda: create_llm("mlx"), api_key="secret")
>>> serve(app, port=8000)

Needs the ``server`` extra (fastapi, uvicorn); the names load on first use so that the
``abstractcore`` command line can import :mod:`abstractcore.server.serve_command` without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app, get_state
    from .lifecycle import serve

__all__ = ["create_app", "get_state", "serve"]

_LAZY = {"create_app": ".app", "get_state": ".app", "serve": ".lifecycle"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
