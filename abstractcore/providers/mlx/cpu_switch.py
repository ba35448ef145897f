"""Which threads run the engine's CPU operations (cpu_ops.py, cpu_rope_norm.py).

Their replacements of mlx-lm's functions and layers sit in the model, which any thread may
call: the benchmark's ``mlx_lm.generate`` baseline and the tests' reference run on other
threads and must get mlx-lm's code. So the fast paths run only on a thread that enabled them
(the engine's thread, at load); one switch serves both modules.
"""

from __future__ import annotations

import threading

__all__ = ["enable_on_this_thread", "enabled_here"]

_local = threading.local()


def enabled_here() -> bool:
    """True on a thread that called :func:`enable_on_this_thread`."""
    return getattr(_local, "on", False)


def enable_on_this_thread(on: bool = True) -> None:
    """Use the fast versions for model calls made by the current thread."""
    _local.on = on
