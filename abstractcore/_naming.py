"""Provider names as the registry keys them (shared by the factory and the config loader)."""

from __future__ import annotations

__all__ = ["canonical_name"]


def canonical_name(name: str) -> str:
    """The registry key for a provider name: ``"OpenAI_Compatible"`` -> ``"openai-compatible"``."""
    return name.strip().lower().replace("_", "-")
