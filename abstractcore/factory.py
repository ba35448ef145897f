"""create_llm() and the provider registry.

Built-in providers and plugins register alike, through the ``abstractcore.providers``
entry-point group; the built-in table below only covers running from a source tree that was
never installed (no metadata, so no entry points).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigurationError
from .providers.base import BaseProvider

__all__ = ["create_llm", "available_providers", "get_provider_class"]

ENTRY_POINT_GROUP = "abstractcore.providers"

_BUILTIN: dict[str, str] = {
    "openai": "abstractcore.providers.openai:OpenAIProvider",
    "openai-compatible": "abstractcore.providers.openai:OpenAICompatibleProvider",
    "lmstudio": "abstractcore.providers.openai:LMStudioProvider",
    "anthropic": "abstractcore.providers.anthropic:AnthropicProvider",
    "ollama": "abstractcore.providers.ollama:OllamaProvider",
    "mlx": "abstractcore.providers.mlx.provider:MLXProvider",
}


@lru_cache(maxsize=1)
def _registry() -> dict[str, str]:
    table = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        table[ep.name] = ep.value
    return table


def available_providers() -> list[str]:
    """Names accepted by ``create_llm(provider=...)``."""
    return sorted(_registry())


def get_provider_class(name: str) -> type[BaseProvider]:
    """Import and return the provider class registered under ``name``."""
    key = name.strip().lower().replace("_", "-")
    target = _registry().get(key)
    if target is None:
        raise ConfigurationError(
            f"unknown provider {name!r}; available: {', '.join(available_providers())}",
            setting="provider",
        )
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigurationError(
            f"provider {name!r} needs packages that are not installed ({exc.name}); "
            f"install the matching extra, e.g. pip install 'abstractcore[{key}]'",
            setting="provider",
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseProvider)):
        raise ConfigurationError(f"{target} is not a BaseProvider subclass", setting="provider")
    return cls


def create_llm(
    provider: str | None = None,
    model: str | None = None,
    *,
    profile: str | None = None,
    **options: Any,
) -> BaseProvider:
    """Return a provider instance: ``create_llm("openai", model="gpt-4o-mini")``."""
    if provider is None:
        raise ConfigurationError("provider is required", setting="provider")
    cls = get_provider_class(provider)
    if model is None:
        raise ConfigurationError("model is required", setting="model")
    return cls(model=model, **options)
