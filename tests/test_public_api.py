"""The public surface: pinned names, docstrings, the error tree, and an import that does no work."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

import abstractcore
import abstractcore.config
import abstractcore.errors
import abstractcore.factory
import abstractcore.request
import abstractcore.structured
import abstractcore.tools
import abstractcore.types
from abstractcore import errors

EXPECTED_ALL = [
    "__version__",
    "create_llm",
    "available_providers",
    "BaseProvider",
    "GenerateResponse",
    "StreamChunk",
    "Message",
    "Usage",
    "Timing",
    "ToolCall",
    "ToolCallDelta",
    "TokenLogprob",
    "TopLogprob",
    "Tool",
    "ToolRun",
    "tool",
    "run_tools",
    "arun_tools",
    "errors",
    "AbstractCoreError",
    "ConfigurationError",
    "ProviderError",
    "OverloadedError",
    "GenerationCancelledError",
    "UnsupportedFeatureError",
    "StructuredOutputError",
    "ToolCallError",
]

EXPECTED_ERRORS = [
    "AbstractCoreError",
    "ConfigurationError",
    "ProviderError",
    "AuthenticationError",
    "RateLimitError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ContextLengthError",
    "MemoryBudgetError",
    "ProviderUnavailableError",
    "ProviderAPIError",
    "RequestTimeoutError",
    "OverloadedError",
    "GenerationCancelledError",
    "UnsupportedFeatureError",
    "StructuredOutputError",
    "ToolCallError",
    "MaxTurnsExceededError",
]

# Modules that must stay unloaded after `import abstractcore` (no work at import time).
HEAVY = [
    "mlx",
    "mlx_lm",
    "httpx",
    "abstractcore.providers._http",
    "abstractcore.providers.openai",
    "abstractcore.providers.anthropic",
    "abstractcore.providers.ollama",
    "abstractcore.providers.mlx",
    "abstractcore.server",
    "abstractcore.bench",
    "fastapi",
    "uvicorn",
    "matplotlib",
    "transformers",
    "openai",
    "anthropic",
    "jsonschema",
]


def test_all_is_pinned() -> None:
    assert sorted(abstractcore.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert hasattr(abstractcore, name), name


def test_errors_all_is_pinned() -> None:
    assert sorted(errors.__all__) == sorted(EXPECTED_ERRORS)
    for name in EXPECTED_ERRORS:
        assert issubclass(getattr(errors, name), Exception), name


def test_documented_imports_work() -> None:
    from abstractcore import GenerateResponse, Message, StreamChunk, create_llm
    from abstractcore.errors import ConfigurationError, RateLimitError

    assert callable(create_llm)
    assert all(isinstance(c, type) for c in (GenerateResponse, Message, StreamChunk))
    assert issubclass(RateLimitError, errors.ProviderError)
    assert abstractcore.ConfigurationError is ConfigurationError


def test_create_llm_signature() -> None:
    params = inspect.signature(abstractcore.create_llm).parameters
    assert list(params) == ["provider", "model", "profile", "options"]
    assert params["provider"].default is None and params["model"].default is None
    assert params["profile"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["options"].kind is inspect.Parameter.VAR_KEYWORD


def test_error_tree_matches_design() -> None:
    parents = {
        "ConfigurationError": errors.AbstractCoreError,
        "ProviderError": errors.AbstractCoreError,
        "GenerationCancelledError": errors.AbstractCoreError,
        "AuthenticationError": errors.ProviderError,
        "RateLimitError": errors.ProviderError,
        "InvalidRequestError": errors.ProviderError,
        "ModelNotFoundError": errors.ProviderError,
        "ContextLengthError": errors.InvalidRequestError,
        "ProviderUnavailableError": errors.ProviderError,
        "ProviderAPIError": errors.ProviderError,
        "RequestTimeoutError": errors.ProviderError,
        "OverloadedError": errors.ProviderError,
        "UnsupportedFeatureError": errors.InvalidRequestError,
        "StructuredOutputError": errors.AbstractCoreError,
        "ToolCallError": errors.AbstractCoreError,
        "MaxTurnsExceededError": errors.AbstractCoreError,
    }
    for name, parent in parents.items():
        assert issubclass(getattr(errors, name), parent), name
    assert issubclass(errors.RequestTimeoutError, TimeoutError)


def test_errors_carry_their_fields() -> None:
    rl = errors.RateLimitError(
        "slow down",
        retry_after=1.5,
        provider="openai",
        status_code=429,
        body={"error": "x"},
        headers={"Retry-After": "2"},
    )
    assert (rl.retry_after, rl.provider, rl.status_code, rl.body) == (
        1.5,
        "openai",
        429,
        {"error": "x"},
    )
    assert rl.headers == {"Retry-After": "2"}
    bad = errors.ContextLengthError("too long", field="messages", status_code=400)
    assert bad.field == "messages" and bad.status_code == 400
    cfg = errors.ConfigurationError("no model", setting="model")
    assert cfg.setting == "model" and str(cfg) == "no model"
    assert errors.OverloadedError("full", retry_after=0.5).retry_after == 0.5


def _public_objects() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    modules: list[ModuleType] = [
        abstractcore,
        errors,
        abstractcore.factory,
        abstractcore.config,
        abstractcore.types,
        abstractcore.request,
        abstractcore.structured,
        abstractcore.tools,
    ]
    for mod in modules:
        out.append((mod.__name__, mod))
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # __version__, the errors module (checked above), Literal aliases
            out.append((f"{mod.__name__}.{name}", obj))
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    fn = member.fget if isinstance(member, property) else member
                    if inspect.isfunction(fn) or isinstance(member, (classmethod, staticmethod)):
                        out.append((f"{mod.__name__}.{name}.{attr}", fn))
    return out


@pytest.mark.parametrize(
    ("name", "obj"), _public_objects(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_name_has_docstring(name: str, obj: Any) -> None:
    doc = inspect.getdoc(obj) if not isinstance(obj, (classmethod, staticmethod)) else obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring"
    # A class must not merely inherit its docstring (pydantic/Exception give one for free).
    if inspect.isclass(obj):
        assert "__doc__" in vars(obj) and vars(obj)["__doc__"], (
            f"{name} has no docstring of its own"
        )


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )


def test_import_leaves_root_logger_alone() -> None:
    proc = _run("import abstractcore, logging; assert not logging.getLogger().handlers")
    assert proc.returncode == 0, proc.stderr


def test_import_loads_no_backend_server_or_plotting_modules() -> None:
    code = (
        "import sys, json, abstractcore, abstractcore.errors, abstractcore.types, "
        "abstractcore.config; "
        "from abstractcore import create_llm, GenerateResponse, StreamChunk, Message; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    bad = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not bad, f"importing abstractcore loaded {bad}"
    import_warnings = proc.stderr.strip()
    assert not import_warnings, import_warnings
