"""Settings for create_llm(): explicit arguments > environment > TOML file (with profiles).

The file is ``./abstractcore.toml`` or the path in ``ABSTRACTCORE_CONFIG``::

    provider = "mlx"                 # top level: the defaults
    temperature = 0.2
    default_profile = "local"

    [profiles.local]
    provider = "lmstudio"
    model = "qwen2.5-7b-instruct"

    [profiles.prod]
    provider = "openai"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"   # read the key from this variable, not the file

The profile named by ``profile=``, ``ABSTRACTCORE_PROFILE`` or ``default_profile`` is laid over
the top level. Connection settings (``model``, ``base_url``, ``api_key``, ``max_retries``)
belong to a backend: a layer that names a different provider than the one finally chosen
contributes only its generation defaults (``temperature``, ``max_output_tokens``...).
Provider credentials such as ``OPENAI_API_KEY`` or ``OLLAMA_HOST`` are read by the providers
themselves, not here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from ._naming import canonical_name
from .errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "CONFIG_FILENAME",
    "PROVIDER_ENV_VARS",
    "EnvSettings",
    "ResolvedConfig",
    "resolve_config",
]

CONFIG_FILENAME = "abstractcore.toml"

# Variables the providers read themselves; named in error messages so users find them.
PROVIDER_ENV_VARS: dict[str, dict[str, str]] = {
    "openai": {"api_key": "OPENAI_API_KEY", "base_url": "OPENAI_BASE_URL"},
    "anthropic": {"api_key": "ANTHROPIC_API_KEY", "base_url": "ANTHROPIC_BASE_URL"},
    "ollama": {"base_url": "OLLAMA_HOST"},
}

# Settings tied to one backend; dropped from a layer that names another provider.
_CONNECTION_KEYS = frozenset({"model", "base_url", "api_key", "api_key_env", "max_retries"})
_STRING_KEYS = ("provider", "model", "api_key", "api_key_env")
_FILE_ONLY_KEYS = frozenset({"default_profile", "profiles"})
_ARGUMENT = "argument"


class EnvSettings(BaseSettings):
    """The ``ABSTRACTCORE_*`` environment variables (empty values count as unset)."""

    model_config = SettingsConfigDict(
        env_prefix="ABSTRACTCORE_", env_ignore_empty=True, extra="ignore"
    )

    provider: str | None = None
    model: str | None = None
    profile: str | None = None
    config: Path | None = None


@dataclass(frozen=True)
class ResolvedConfig:
    """What create_llm() will build, and where each setting came from."""

    provider: str
    model: str | None
    options: dict[str, Any]
    sources: dict[str, str]
    profile: str | None = None
    config_path: Path | None = None
    ignored: dict[str, str] = field(default_factory=dict)

    def where(self, setting: str) -> str:
        """Describe every place ``setting`` could be given, for error messages."""
        return _where(setting, self.provider, self.config_path, self.profile)

    def error(self, setting: str, problem: str) -> ConfigurationError:
        """A ConfigurationError for ``setting`` that says where it came from or could."""
        src = self.sources.get(setting)
        if src is not None:
            return ConfigurationError(f"{problem} (from {src})", setting=setting)
        hint = self.ignored.get(setting, "")
        return ConfigurationError(f"{problem}{hint}; {self.where(setting)}", setting=setting)


@dataclass
class _Layer:
    """Settings from one source, each value labelled with where it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, source: str) -> None:
        if value is not None:
            self.values[key] = value
            self.sources[key] = source

    def overlay(self, other: _Layer) -> None:
        if "api_key" in other.values or "api_key_env" in other.values:
            for k in ("api_key", "api_key_env"):  # the nearer layer's way to the key wins
                self.values.pop(k, None)
                self.sources.pop(k, None)
        self.values.update(other.values)
        self.sources.update(other.sources)

    def provider(self) -> str | None:
        p = self.values.get("provider")
        return canonical_name(p) if isinstance(p, str) else None

    def without_connection(self) -> _Layer:
        keep = {k: v for k, v in self.values.items() if k not in _CONNECTION_KEYS}
        return _Layer(keep, {k: self.sources[k] for k in keep})


def resolve_config(
    provider: str | None = None,
    model: str | None = None,
    *,
    profile: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> ResolvedConfig:
    """Merge explicit arguments, ``ABSTRACTCORE_*`` variables and the TOML file."""
    env = EnvSettings()
    path = _find_config_file(env)
    doc = _load_toml(path) if path is not None else {}
    if path is not None:
        _profiles_table(doc, path)  # a malformed [profiles] table is an error even when unused

    profile_name, profile_src = _pick_profile(profile, env, doc, path)
    file_layer = _file_layer(doc, path, profile_name, profile_src)

    env_layer = _Layer()
    env_layer.set("provider", env.provider, "environment variable ABSTRACTCORE_PROVIDER")
    env_layer.set("model", env.model, "environment variable ABSTRACTCORE_MODEL")

    arg_layer = _Layer()
    arg_layer.set("provider", provider, "argument provider=")
    arg_layer.set("model", model, "argument model=")
    for key, value in (options or {}).items():
        arg_layer.set(key, value, f"argument {key}=")

    for layer in (file_layer, env_layer, arg_layer):
        _check_strings(layer)
    chosen = arg_layer.provider() or env_layer.provider() or file_layer.provider()
    if chosen is None:
        raise ConfigurationError(
            f"no provider given; {_where('provider', None, path, profile_name)}",
            setting="provider",
        )

    merged = _Layer()
    ignored: dict[str, str] = {}
    for layer in (file_layer, env_layer, arg_layer):
        other = layer.provider()
        if other is not None and other != chosen:
            for key in _CONNECTION_KEYS & layer.values.keys():
                ignored[key] = (
                    f" ({key} from {layer.sources[key]} is for provider {other!r}, not {chosen!r})"
                )
            layer = layer.without_connection()
        merged.overlay(layer)

    values, sources = merged.values, merged.sources
    values["provider"] = chosen
    _resolve_api_key_env(values, sources)
    opts = {k: v for k, v in values.items() if k not in ("provider", "model")}
    return ResolvedConfig(
        provider=chosen,
        model=values.get("model"),
        options=opts,
        sources=sources,
        profile=profile_name,
        config_path=path,
        ignored=ignored,
    )


# ---------------------------------------------------------------------- file handling
def _find_config_file(env: EnvSettings) -> Path | None:
    if env.config is not None:
        path = env.config.expanduser()
        if not path.is_file():
            raise ConfigurationError(
                f"ABSTRACTCORE_CONFIG names {str(path)!r}, which is not a file",
                setting="ABSTRACTCORE_CONFIG",
            )
        return path.resolve()
    local = Path.cwd() / CONFIG_FILENAME
    return local if local.is_file() else None


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            doc: dict[str, Any] = tomllib.load(f)
            return doc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"config file {path} is not valid TOML: {exc}", setting="config"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read config file {path}: {exc}", setting="config"
        ) from exc


def _pick_profile(
    profile: str | None, env: EnvSettings, doc: Mapping[str, Any], path: Path | None
) -> tuple[str | None, str | None]:
    if profile is not None:
        name, src = profile, "argument profile="
    elif env.profile is not None:
        name, src = env.profile, "environment variable ABSTRACTCORE_PROFILE"
    elif "default_profile" in doc:
        name, src = doc["default_profile"], f"default_profile in {path}"
    else:
        return None, None
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"profile must be a non-empty string, got {name!r} (from {src})", setting="profile"
        )
    if path is None:
        raise ConfigurationError(
            f"profile {name!r} (from {src}) needs a config file, but there is none: looked for "
            f"./{CONFIG_FILENAME} in {Path.cwd()}; set ABSTRACTCORE_CONFIG to the file's path",
            setting="profile",
        )
    profiles = _profiles_table(doc, path)
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigurationError(
            f"unknown profile {name!r} (from {src}); {path} defines: {known}", setting="profile"
        )
    return name, src


def _profiles_table(doc: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, Mapping):
        raise ConfigurationError(
            f"'profiles' in {path} must be a table of [profiles.NAME] tables", setting="profiles"
        )
    for name, table in profiles.items():
        if not isinstance(table, Mapping):
            raise ConfigurationError(
                f"profiles.{name} in {path} must be a table ([profiles.{name}])",
                setting=f"profiles.{name}",
            )
    return profiles


def _file_layer(
    doc: Mapping[str, Any], path: Path | None, profile: str | None, profile_src: str | None
) -> _Layer:
    if path is None:
        return _Layer()
    top = _table_layer({k: v for k, v in doc.items() if k not in _FILE_ONLY_KEYS}, str(path))
    if profile is None:
        return top
    label = f"{path} [profiles.{profile}]"
    prof = _table_layer(_profiles_table(doc, path)[profile], label)
    named = prof.provider()
    if named is not None and top.provider() not in (None, named):
        top = top.without_connection()
    top.overlay(prof)
    return top


def _table_layer(table: Mapping[str, Any], label: str) -> _Layer:
    layer = _Layer()
    for key, value in table.items():
        if isinstance(value, Mapping):
            raise ConfigurationError(
                f"unexpected table [{key}] in {label}; settings are plain keys, profiles go "
                "under [profiles.NAME]",
                setting=key,
            )
        layer.set(key, value, label)
    if "api_key" in table and "api_key_env" in table:
        raise ConfigurationError(
            f"{label} sets both api_key and api_key_env; keep one (api_key_env keeps the "
            "secret out of the file)",
            setting="api_key",
        )
    return layer


def _resolve_api_key_env(values: dict[str, Any], sources: dict[str, str]) -> None:
    if "api_key_env" not in values:
        return
    var, src = values.pop("api_key_env"), sources.pop("api_key_env")
    if not isinstance(var, str) or not var:
        raise ConfigurationError(
            f"api_key_env must name an environment variable, got {var!r} (from {src})",
            setting="api_key_env",
        )
    key = os.environ.get(var)
    if not key:
        raise ConfigurationError(
            f"api_key_env = {var!r} (from {src}) names an environment variable that is not "
            f"set; export {var}=...",
            setting="api_key",
        )
    values["api_key"] = key
    sources["api_key"] = f"environment variable {var} (api_key_env in {src})"


def _check_strings(layer: _Layer) -> None:
    for key in _STRING_KEYS:
        value = layer.values.get(key)
        empty_ok = key == "api_key"  # local servers often take any key, even ""
        if value is not None and (not isinstance(value, str) or not (empty_ok or value.strip())):
            raise ConfigurationError(
                f"{key} must be a {'' if empty_ok else 'non-empty '}string, "
                f"got {value!r} (from {layer.sources[key]})",
                setting=key,
            )


def _where(setting: str, provider: str | None, path: Path | None, profile: str | None) -> str:
    """Every place a setting can come from, in precedence order."""
    file = (
        str(path)
        if path is not None
        else f"./{CONFIG_FILENAME} (or the file in ABSTRACTCORE_CONFIG)"
    )
    table = (
        f"[profiles.{profile}] or the top level" if profile else "the top level or [profiles.NAME]"
    )
    places = [f"pass {setting}=... to create_llm()"]
    if setting in ("provider", "model"):
        places.append(f"set ABSTRACTCORE_{setting.upper()}")
    provider_var = PROVIDER_ENV_VARS.get(provider or "", {}).get(setting)
    if provider_var:
        places.append(f"set {provider_var} (read by the {provider} provider)")
    in_file = f"set {setting}" + (" (or api_key_env)" if setting == "api_key" else "")
    places.append(f"{in_file} in {file}, {table}")
    text = ", ".join(places[:-1]) + f", or {places[-1]}"
    if setting == "model" and provider in PROVIDER_ENV_VARS:
        names = ", ".join(sorted(set(PROVIDER_ENV_VARS[provider].values())))
        text += f" (the {provider} provider reads {names} itself)"
    return text
