"""Settings resolution: arguments > ABSTRACTCORE_* environment > TOML file and its profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from abstractcore import create_llm
from abstractcore.config import ResolvedConfig, resolve_config
from abstractcore.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]
ENV_VARS = (
    "ABSTRACTCORE_PROVIDER",
    "ABSTRACTCORE_MODEL",
    "ABSTRACTCORE_PROFILE",
    "ABSTRACTCORE_CONFIG",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "OLLAMA_HOST",
)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory and none of the variables create_llm() reads."""
    monkeypatch.chdir(tmp_path)
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    yield tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FILE = """
provider = "ollama"
model = "llama3.2"
base_url = "http://127.0.0.1:11434"
temperature = 0.2
max_output_tokens = 64
default_profile = "local"

[profiles.local]
model = "qwen2.5:0.5b"

[profiles.prod]
provider = "openai-compatible"
model = "gpt-4o-mini"
api_key_env = "PROD_KEY"
temperature = 0.0

[profiles.studio]
provider = "lmstudio"
"""


# ---------------------------------------------------------------------- precedence
def test_arguments_beat_environment_beat_file(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(cwd / "abstractcore.toml", 'provider = "ollama"\nmodel = "from-file"\n')
    cfg = resolve_config()
    assert (cfg.provider, cfg.model) == ("ollama", "from-file")
    assert cfg.sources["model"] == str(cwd / "abstractcore.toml")

    monkeypatch.setenv("ABSTRACTCORE_MODEL", "from-env")
    cfg = resolve_config()
    assert (
        cfg.model == "from-env"
        and cfg.sources["model"] == "environment variable ABSTRACTCORE_MODEL"
    )

    cfg = resolve_config(model="from-arg")
    assert cfg.model == "from-arg" and cfg.sources["model"] == "argument model="


def test_options_from_file_and_arguments_merge(cwd: Path) -> None:
    _write(cwd / "abstractcore.toml", FILE)
    cfg = resolve_config(options={"max_output_tokens": 8, "top_k": None})
    assert cfg.options == {
        "base_url": "http://127.0.0.1:11434",
        "temperature": 0.2,
        "max_output_tokens": 8,
    }
    assert cfg.sources["max_output_tokens"] == "argument max_output_tokens="
    assert cfg.profile == "local" and cfg.model == "qwen2.5:0.5b"
    assert cfg.sources["model"].endswith("[profiles.local]")


def test_environment_provider_beats_file_and_drops_its_connection_settings(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(
        cwd / "abstractcore.toml",
        'provider = "ollama"\nmodel = "llama3.2"\nbase_url = "http://h:1"\ntemperature = 0.5\n',
    )
    monkeypatch.setenv("ABSTRACTCORE_PROVIDER", "lmstudio")
    cfg = resolve_config()
    assert cfg.provider == "lmstudio" and cfg.sources["provider"].endswith("ABSTRACTCORE_PROVIDER")
    assert cfg.model is None and "base_url" not in cfg.options
    assert cfg.options == {"temperature": 0.5}  # generation defaults carry over
    msg = str(cfg.error("model", "no model given"))
    assert "'ollama'" in msg and "ABSTRACTCORE_MODEL" in msg


def test_empty_environment_variables_count_as_unset(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(cwd / "abstractcore.toml", 'provider = "ollama"\n')
    monkeypatch.setenv("ABSTRACTCORE_PROVIDER", "")
    monkeypatch.setenv("ABSTRACTCORE_CONFIG", "")
    assert resolve_config().provider == "ollama"


def test_provider_names_are_canonical(cwd: Path) -> None:
    assert resolve_config("OpenAI_Compatible").provider == "openai-compatible"


# ---------------------------------------------------------------------- profiles
def test_profile_precedence(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(cwd / "abstractcore.toml", FILE)
    monkeypatch.setenv("PROD_KEY", "sk-test")
    assert resolve_config().profile == "local"  # default_profile
    monkeypatch.setenv("ABSTRACTCORE_PROFILE", "studio")
    assert resolve_config().profile == "studio"
    cfg = resolve_config(profile="prod")
    assert cfg.profile == "prod"
    assert cfg.provider == "openai-compatible" and cfg.model == "gpt-4o-mini"
    # the top level's ollama base_url does not leak into another backend's profile
    assert cfg.options == {"api_key": "sk-test", "temperature": 0.0, "max_output_tokens": 64}
    assert cfg.sources["api_key"] == (
        "environment variable PROD_KEY "
        f"(api_key_env in {cwd / 'abstractcore.toml'} [profiles.prod])"
    )


def test_transport_settings_stay_with_their_backend(cwd: Path) -> None:
    _write(
        cwd / "abstractcore.toml",
        'provider = "ollama"\nmax_retries = 5\ntop_k = 3\n[profiles.local]\nprovider = "mlx"\n',
    )
    assert resolve_config(profile="local").options == {"top_k": 3}
    assert resolve_config().options == {"max_retries": 5, "top_k": 3}


def test_profile_without_provider_inherits_top_level(cwd: Path) -> None:
    _write(cwd / "abstractcore.toml", FILE)
    cfg = resolve_config(profile="local")
    assert cfg.provider == "ollama" and cfg.options["base_url"] == "http://127.0.0.1:11434"


def test_unknown_profile_names_source_file_and_known_profiles(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(cwd / "abstractcore.toml", FILE)
    with pytest.raises(ConfigurationError) as exc:
        resolve_config(profile="staging")
    msg = str(exc.value)
    assert exc.value.setting == "profile"
    assert "'staging'" in msg and "argument profile=" in msg and str(path) in msg
    assert "local, prod, studio" in msg
    monkeypatch.setenv("ABSTRACTCORE_PROFILE", "qa")
    with pytest.raises(ConfigurationError, match="ABSTRACTCORE_PROFILE"):
        resolve_config()


def test_profile_without_a_file(cwd: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        resolve_config(profile="prod")
    assert exc.value.setting == "profile"
    assert "abstractcore.toml" in str(exc.value) and "ABSTRACTCORE_CONFIG" in str(exc.value)


def test_abstractcore_config_points_at_another_file(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _write(cwd / "elsewhere.toml", 'provider = "anthropic"\nmodel = "claude-x"\n')
    _write(cwd / "abstractcore.toml", 'provider = "ollama"\n')
    monkeypatch.setenv("ABSTRACTCORE_CONFIG", str(other))
    cfg = resolve_config()
    assert cfg.provider == "anthropic" and cfg.config_path == other
    monkeypatch.setenv("ABSTRACTCORE_CONFIG", str(cwd / "missing.toml"))
    with pytest.raises(ConfigurationError, match="ABSTRACTCORE_CONFIG.*missing.toml") as exc:
        resolve_config()
    assert exc.value.setting == "ABSTRACTCORE_CONFIG"


# ---------------------------------------------------------------------- api keys
def test_api_key_env_unset_is_an_error_naming_the_variable(cwd: Path) -> None:
    _write(cwd / "abstractcore.toml", FILE)
    with pytest.raises(ConfigurationError) as exc:
        resolve_config(profile="prod")
    assert exc.value.setting == "api_key"
    assert "PROD_KEY" in str(exc.value) and "[profiles.prod]" in str(exc.value)


def test_api_key_and_api_key_env_together_is_an_error(cwd: Path) -> None:
    _write(cwd / "abstractcore.toml", 'provider = "openai"\napi_key = "x"\napi_key_env = "Y"\n')
    with pytest.raises(ConfigurationError, match="both api_key and api_key_env"):
        resolve_config()


def test_profile_api_key_env_replaces_top_level_api_key(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(
        cwd / "abstractcore.toml",
        'provider = "openai"\napi_key = "top"\n[profiles.p]\napi_key_env = "K"\n',
    )
    monkeypatch.setenv("K", "from-var")
    assert resolve_config(profile="p").options["api_key"] == "from-var"
    assert resolve_config(options={"api_key": None}).options["api_key"] == "top"
    assert resolve_config(options={"api_key": "arg"}, profile="p").options["api_key"] == "arg"


# ---------------------------------------------------------------------- malformed input
def test_no_provider_anywhere_names_every_source(cwd: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        resolve_config()
    msg = str(exc.value)
    assert exc.value.setting == "provider"
    for place in ("provider=", "ABSTRACTCORE_PROVIDER", "abstractcore.toml", "ABSTRACTCORE_CONFIG"):
        assert place in msg, (place, msg)


def test_malformed_toml_names_the_file(cwd: Path) -> None:
    path = _write(cwd / "abstractcore.toml", 'provider = "ollama\nmodel = 3\n')
    with pytest.raises(ConfigurationError) as exc:
        resolve_config()
    assert str(path) in str(exc.value) and "not valid TOML" in str(exc.value)
    assert exc.value.__cause__ is not None


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("provider = 5\n", "provider"),
        ('provider = "ollama"\nmodel = ["a"]\n', "model"),
        ('provider = "ollama"\nmodel = ""\n', "model"),
        ('provider = "ollama"\napi_key_env = 3\n', "api_key_env"),
        ('provider = "ollama"\nprofiles = "x"\n', "profiles"),
        ('provider = "ollama"\n[profiles]\nprod = "x"\n', "profiles.prod"),
        ('provider = "ollama"\n[server]\nport = 1\n', "server"),
        ('provider = "ollama"\ndefault_profile = 3\n', "profile"),
        ("[profiles.p]\nprovider = true\n", "provider"),
    ],
)
def test_wrong_types_in_file(cwd: Path, text: str, setting: str) -> None:
    path = _write(cwd / "abstractcore.toml", text)
    with pytest.raises(ConfigurationError) as exc:
        resolve_config(profile="p" if "[profiles.p]" in text else None)
    assert exc.value.setting == setting
    assert str(path) in str(exc.value) or "default_profile" in str(exc.value)


def test_wrong_types_in_arguments(cwd: Path) -> None:
    with pytest.raises(ConfigurationError, match="argument provider=") as exc:
        resolve_config(provider=3)  # type: ignore[arg-type]
    assert exc.value.setting == "provider"
    with pytest.raises(ConfigurationError, match="argument model="):
        resolve_config("ollama", model="  ")


def test_resolved_config_is_a_plain_value(cwd: Path) -> None:
    cfg = resolve_config("ollama", "m", options={"temperature": 0})
    assert isinstance(cfg, ResolvedConfig) and cfg.config_path is None and cfg.profile is None


# ---------------------------------------------------------------------- real providers
# Constructing a provider makes no network request, so no server is needed here.
SWITCHES = [
    (
        'provider = "openai-compatible"\nmodel = "m"\n'
        'base_url = "http://127.0.0.1:9/v1"\napi_key = "k"\n',
        "OpenAICompatibleProvider",
        "http://127.0.0.1:9/v1",
    ),
    ('provider = "lmstudio"\nmodel = "m"\n', "LMStudioProvider", "http://localhost:1234/v1"),
    (
        'provider = "ollama"\nmodel = "m"\nbase_url = "http://127.0.0.1:11435"\n',
        "OllamaProvider",
        "http://127.0.0.1:11435",
    ),
]


def _base_url(llm: object) -> str:
    return str(llm.base_url).rstrip("/")  # type: ignore[attr-defined]


def test_app_switches_backend_by_editing_the_file_only(cwd: Path) -> None:
    path = cwd / "abstractcore.toml"
    for body, cls_name, url in SWITCHES:
        _write(path, f'default_profile = "dev"\n[profiles.prod]\n{body}')
        with create_llm(profile="prod") as llm:  # the app's only line, unchanged
            assert type(llm).__name__ == cls_name
            assert llm.model == "m" and _base_url(llm) == url


def test_missing_model_for_real_provider_names_its_env_vars(cwd: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        create_llm("openai")
    msg = str(exc.value)
    assert exc.value.setting == "model"
    for place in (
        "model=",
        "ABSTRACTCORE_MODEL",
        "abstractcore.toml",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ):
        assert place in msg, (place, msg)


def test_example_app_switches_backend_by_editing_its_toml(cwd: Path) -> None:
    config = cwd / "abstractcore.toml"
    shutil.copy(ROOT / "examples" / "abstractcore.toml", config)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["ABSTRACTCORE_CONFIG"] = str(config)

    def show() -> str:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "config_profiles.py"),
                "--show",
                "--profile",
                "prod",
            ],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=cwd,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    text = config.read_text()
    head, rest = text.split("\n[profiles.prod]\n")
    prod, tail = rest.split("\n[profiles.", 1)
    assert 'provider = "lmstudio"' in prod
    assert "LMStudioProvider" in show()
    ollama = 'provider = "ollama"\nmodel = "qwen2.5:0.5b"\nbase_url = "http://127.0.0.1:11434"\n'
    config.write_text(f"{head}\n[profiles.prod]\n{ollama}\n[profiles.{tail}")
    out = show()
    assert "OllamaProvider" in out and "http://127.0.0.1:11434" in out
