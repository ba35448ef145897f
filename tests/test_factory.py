"""The provider registry and create_llm(): entry-point plugins, defaults, errors that name
their source.

A real plugin is installed for these tests: a ``*.dist-info`` directory with an
``entry_points.txt`` on ``sys.path``, found by ``importlib.metadata`` exactly as a pip-installed
plugin would be.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from abstractcore import create_llm, factory
from abstractcore.errors import ConfigurationError, InvalidRequestError
from abstractcore.factory import available_providers, canonical_name, get_provider_class
from abstractcore.providers.base import BaseProvider

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLUGIN_MODULE = '''
"""A third-party provider plugin, installed for the tests."""
from __future__ import annotations
from typing import Any, ClassVar
from abstractcore.errors import ConfigurationError
from abstractcore.providers.base import BaseProvider
from abstractcore.types import StreamChunk


class EchoProvider(BaseProvider):
    """Echoes the prompt; takes the HTTP providers' constructor options."""

    provider_name: ClassVar[str] = "echo"
    default_model: ClassVar[str | None] = "echo-1"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, max_retries: int = 2, **defaults: Any) -> None:
        super().__init__(model, timeout=timeout, **defaults)
        self.base_url, self.api_key, self.max_retries = base_url, api_key, max_retries

    def _stream(self, request):
        yield StreamChunk(content=request.messages[-1].content)
        yield StreamChunk(finish_reason="stop")

    async def _astream(self, request):
        for chunk in self._stream(request):
            yield chunk


class KeyedProvider(EchoProvider):
    """Needs a model and an API key; its constructor lists every option it takes."""

    provider_name: ClassVar[str] = "keyed"
    default_model: ClassVar[str | None] = None

    def __init__(
        self, model: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> None:
        if not api_key:
            raise ConfigurationError("the keyed provider needs an API key", setting="api_key")
        super().__init__(model, api_key=api_key, base_url=base_url)


class NotAProvider:
    """Registered by mistake."""
'''

ENTRY_POINTS = """
[abstractcore.providers]
echo = abstractcore_testplugin:EchoProvider
Keyed_Provider = abstractcore_testplugin:KeyedProvider
missing-attr = abstractcore_testplugin:Nope
not-a-provider = abstractcore_testplugin:NotAProvider
needs-extra = abstractcore_testplugin_missing_dependency:Provider
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install the test plugin on sys.path and isolate from the user's config and env."""
    site = tmp_path / "site"
    (site / "abstractcore_testplugin-0.1.dist-info").mkdir(parents=True)
    (site / "abstractcore_testplugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    info = site / "abstractcore_testplugin-0.1.dist-info"
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: abstractcore-testplugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for var in (
        "ABSTRACTCORE_PROVIDER",
        "ABSTRACTCORE_MODEL",
        "ABSTRACTCORE_PROFILE",
        "ABSTRACTCORE_CONFIG",
    ):
        monkeypatch.delenv(var, raising=False)
    factory._registry.cache_clear()
    yield work
    factory._registry.cache_clear()
    sys.modules.pop("abstractcore_testplugin", None)


def test_builtin_table_matches_packaged_entry_points() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["abstractcore.providers"]
    assert declared == factory._BUILTIN


def test_builtins_are_available() -> None:
    assert {"openai", "openai-compatible", "lmstudio", "anthropic", "ollama", "mlx"} <= set(
        available_providers()
    )


def test_canonical_name() -> None:
    assert canonical_name(" OpenAI_Compatible ") == "openai-compatible"


def test_plugin_is_discovered_through_entry_points(plugin: Path) -> None:
    names = available_providers()
    assert "echo" in names and "keyed-provider" in names
    cls = get_provider_class("ECHO")
    assert cls.__name__ == "EchoProvider" and issubclass(cls, BaseProvider)
    assert get_provider_class("keyed_provider").__name__ == "KeyedProvider"


def test_default_model_is_used_when_none_given(plugin: Path) -> None:
    with create_llm("echo") as llm:
        assert llm.model == "echo-1"
        assert llm.generate("ping").content == "ping"
    assert create_llm("echo", "other").model == "other"


def test_options_reach_the_constructor(plugin: Path) -> None:
    llm = create_llm(
        "echo",
        base_url="http://127.0.0.1:1/v1",
        api_key="k",
        max_retries=5,
        temperature=0.3,
        timeout=None,
    )
    assert (llm.base_url, llm.api_key, llm.max_retries) == ("http://127.0.0.1:1/v1", "k", 5)  # type: ignore[attr-defined]
    assert llm.defaults == {"temperature": 0.3}


def test_missing_model_names_every_source(plugin: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        create_llm("keyed-provider", api_key="k")
    msg = str(exc.value)
    assert exc.value.setting == "model"
    for place in ("model=", "ABSTRACTCORE_MODEL", "abstractcore.toml", "ABSTRACTCORE_CONFIG"):
        assert place in msg, (place, msg)


def test_unknown_provider_names_its_source(plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as exc:
        create_llm("nope")
    assert exc.value.setting == "provider"
    assert (
        "'nope'" in str(exc.value)
        and "echo" in str(exc.value)
        and "argument provider=" in str(exc.value)
    )
    monkeypatch.setenv("ABSTRACTCORE_PROVIDER", "also-nope")
    with pytest.raises(ConfigurationError, match="ABSTRACTCORE_PROVIDER"):
        create_llm()
    (plugin / "abstractcore.toml").write_text('provider = "file-nope"\n')
    monkeypatch.delenv("ABSTRACTCORE_PROVIDER")
    with pytest.raises(ConfigurationError, match=r"file-nope.*abstractcore\.toml"):
        create_llm()


@pytest.mark.parametrize("name", ["missing-attr", "not-a-provider", "needs-extra"])
def test_broken_registrations_are_configuration_errors(plugin: Path, name: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        create_llm(name, "m")
    assert exc.value.setting == "provider" and name in str(exc.value)
    if name == "needs-extra":
        assert isinstance(exc.value.__cause__, ConfigurationError)
        assert isinstance(exc.value.__cause__.__cause__, ImportError)


def test_unknown_option_is_rejected_with_its_source(plugin: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        create_llm("echo", temprature=0.2)
    assert exc.value.setting == "temprature" and "argument temprature=" in str(exc.value)
    assert isinstance(exc.value.__cause__, InvalidRequestError)
    with pytest.raises(ConfigurationError) as exc:
        create_llm("keyed-provider", "m", api_key="k", temperature=0.2)
    assert exc.value.setting == "temperature"
    assert "accepted: api_key, base_url" in str(exc.value)


def test_bad_value_in_file_names_file_and_profile(plugin: Path) -> None:
    (plugin / "abstractcore.toml").write_text(
        'provider = "echo"\n[profiles.hot]\ntemperature = -1\n'
    )
    with pytest.raises(ConfigurationError) as exc:
        create_llm(profile="hot")
    msg = str(exc.value)
    assert exc.value.setting == "temperature"
    assert str(plugin / "abstractcore.toml") in msg and "[profiles.hot]" in msg
    assert isinstance(exc.value.__cause__, InvalidRequestError)


def test_bad_argument_value_is_a_configuration_error(plugin: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        create_llm("echo", max_output_tokens=0)
    assert exc.value.setting == "max_output_tokens" and "argument max_output_tokens=" in str(
        exc.value
    )


def test_provider_configuration_error_gets_the_places_to_fix_it(plugin: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        create_llm("keyed-provider", "m")
    msg = str(exc.value)
    assert exc.value.setting == "api_key"
    assert "needs an API key" in msg and "api_key=" in msg and "api_key_env" in msg


def test_api_key_env_feeds_the_provider(plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (plugin / "abstractcore.toml").write_text(
        'provider = "keyed-provider"\nmodel = "m"\napi_key_env = "MY_TEST_KEY"\n'
    )
    monkeypatch.setenv("MY_TEST_KEY", "secret-123")
    assert create_llm().api_key == "secret-123"  # type: ignore[attr-defined]
    monkeypatch.delenv("MY_TEST_KEY")
    with pytest.raises(ConfigurationError, match="MY_TEST_KEY") as exc:
        create_llm()
    assert exc.value.setting == "api_key"


def test_explicit_provider_ignores_other_backends_connection_settings(plugin: Path) -> None:
    (plugin / "abstractcore.toml").write_text(
        'provider = "keyed-provider"\nmodel = "big-model"\napi_key = "k"\nbase_url = "http://127.0.0.1:9"\n'
    )
    llm = create_llm("echo")
    assert llm.model == "echo-1" and llm.base_url is None and llm.api_key is None  # type: ignore[attr-defined]
    assert type(create_llm()).__name__ == "KeyedProvider"


@pytest.mark.mlx
def test_create_llm_mlx_needs_no_model(
    embedded_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_thread_leak: None
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("ABSTRACTCORE_MODEL", "ABSTRACTCORE_PROFILE", "ABSTRACTCORE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ABSTRACTCORE_PROVIDER", "mlx")
    assert get_provider_class("mlx").default_model == "smollm2-135m"
    with create_llm() as llm:
        assert type(llm).__name__ == "MLXProvider" and llm.model == "smollm2-135m"
