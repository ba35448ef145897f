"""The CPU as Linux's /proc/cpuinfo describes it: one reader for the fields the MLX provider
asks about (the vendor for the BLAS's choice, the flags for the AVX-512 kernels, the model
name for the row-padding tables' key)."""

from __future__ import annotations

__all__ = ["cpu_flags", "cpu_vendor", "cpuinfo_field"]

_PATH = "/proc/cpuinfo"


def cpuinfo_field(*prefixes: str) -> str | None:
    """The value of the first line that starts with one of ``prefixes`` (so the first
    processor's); None when there is none or the file cannot be read (not Linux)."""
    try:
        with open(_PATH, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(prefixes):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str | None:
    """``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``), None if unknown."""
    return cpuinfo_field("vendor_id")


def cpu_flags() -> frozenset[str]:
    """The ``flags`` of the first processor; empty if unknown."""
    return frozenset((cpuinfo_field("flags") or "").split())
