"""create_llm() and the provider registry.

Built-in providers and plugins register alike, through the ``abstractcore.providers``
entry-point group; the built-in table below only covers running from a source tree that was
never installed (no metadata, so no entry points).
"""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ._naming import canonical_name
from .errors import ConfigurationError, InvalidRequestError
from .providers.base import BaseProvider

if TYPE_CHECKING:
    from .config import ResolvedConfig

__all__ = ["available_providers", "canonical_name", "create_llm", "get_provider_class"]

ENTRY_POINT_GROUP = "abstractcore.providers"

_BUILTIN: dict[str, str] = {
    "openai": "abstractcore.providers.openai:OpenAIProvider",
    "openai-compatible": "abstractcore.providers.openai:OpenAICompatibleProvider",
    "lmstudio": "abstractcore.providers.openai:LMStudioProvider",
    "llamacpp": "abstractcore.providers.llamacpp:LlamaCppProvider",
    "anthropic": "abstractcore.providers.anthropic:AnthropicProvider",
    "ollama": "abstractcore.providers.ollama:OllamaProvider",
    "mlx": "abstractcore.providers.mlx.provider:MLXProvider",
}

# Extras that bring a provider's third-party packages (the HTTP providers need none).
_EXTRAS = {"mlx": "mlx"}


@lru_cache(maxsize=1)
def _registry() -> dict[str, str]:
    table = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        table[canonical_name(ep.name)] = ep.value
    return table


def available_providers() -> list[str]:
    """Names accepted by ``create_llm(provider=...)``."""
    return sorted(_registry())


def get_provider_class(name: str) -> type[BaseProvider]:
    """Import and return the provider class registered under ``name``."""
    key = canonical_name(name)
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
        extra = _EXTRAS.get(key)
        fix = f"pip install 'abstractcore[{extra}]'" if extra else "install it"
        raise ConfigurationError(
            f"provider {name!r} needs {exc.name!r}, which cannot be imported; {fix}",
            setting="provider",
        ) from exc
    except AttributeError as exc:
        raise ConfigurationError(
            f"provider {name!r} is registered as {target}, which does not exist",
            setting="provider",
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseProvider)):
        raise ConfigurationError(
            f"provider {name!r} is registered as {target}, which is not a BaseProvider subclass",
            setting="provider",
        )
    return cls


def create_llm(
    provider: str | None = None,
    model: str | None = None,
    *,
    profile: str | None = None,
    **options: Any,
) -> BaseProvider:
    """Return a provider: ``create_llm("openai", model="gpt-4o-mini")`` or
    ``create_llm(profile="prod")``.

    Settings come from, in order: these arguments, the ``ABSTRACTCORE_*`` environment
    variables, then ``./abstractcore.toml`` (or the file in ``ABSTRACTCORE_CONFIG``) and its
    profile. Any bad or missing setting raises ConfigurationError naming it and its source.
    """
    from .config import resolve_config  # pydantic-settings loads on first use, not at import

    cfg = resolve_config(provider, model, profile=profile, options=options)
    try:
        cls = get_provider_class(cfg.provider)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{exc} (provider from {cfg.sources['provider']})", setting="provider"
        ) from exc
    model_name = cfg.model or cls.default_model
    if model_name is None:
        raise cfg.error("model", f"no model given for provider {cfg.provider!r}")
    _check_option_names(cls, cfg)
    try:
        return cls(model=model_name, **cfg.options)
    except InvalidRequestError as exc:
        setting = exc.field or "options"
        raise cfg.error(setting, f"invalid setting {setting}: {exc}") from exc
    except ConfigurationError as exc:
        if exc.setting is None:
            raise
        raise cfg.error(exc.setting, str(exc)) from exc


def _check_option_names(cls: type[BaseProvider], cfg: ResolvedConfig) -> None:
    """Reject unknown settings up front when the constructor's signature lists them all."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return  # BaseProvider rejects unknown names itself, with InvalidRequestError(field=)
    accepted = {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    for key in cfg.options:
        if key not in accepted:
            raise ConfigurationError(
                f"unknown setting {key!r} for provider {cfg.provider!r} (from "
                f"{cfg.sources[key]}); accepted: {', '.join(sorted(accepted - {'model'}))}",
                setting=key,
            )
