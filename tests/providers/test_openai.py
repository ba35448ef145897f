"""OpenAI Chat Completions: wire details, configuration, and a real mlx-lm server over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from abstractcore.errors import ConfigurationError, ContextLengthError, InvalidRequestError
from abstractcore.factory import get_provider_class
from abstractcore.providers.openai import (
    LMStudioProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
)

_OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")


def test_registered_names() -> None:
    assert get_provider_class("openai") is OpenAIProvider
    assert get_provider_class("openai-compatible") is OpenAICompatibleProvider
    assert get_provider_class("lmstudio") is LMStudioProvider


def test_request_body_and_headers(make_llm: Any, fake: Any) -> None:
    llm = make_llm("openai", api_key="sk-secret")
    llm.generate(
        "hello there world",
        system_prompt="be brief",
        max_output_tokens=50,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop=["\n\n"],
        prompt_cache_key="conv-1",
        extra_body={"user": "u-42"},  # provider-specific fields are merged into the body
    )
    (req,) = fake.requests(llm.model)
    assert req.path == "/openai/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-secret"
    assert req.json == {
        "model": llm.model,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ],
        "stream": False,
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["\n\n"],
        "prompt_cache_key": "conv-1",
        "user": "u-42",
    }


def test_stream_asks_for_usage(make_llm: Any, fake: Any) -> None:
    llm = make_llm("openai")
    chunks = list(llm.stream("hello there world"))
    (req,) = fake.requests(llm.model)
    assert req.json["stream"] is True and req.json["stream_options"] == {"include_usage": True}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_usage_a_server_does_not_send_is_unknown_not_zero(make_llm: Any) -> None:
    llm = make_llm("openai", "no-usage")
    whole = llm.generate("hello there world")
    chunks = list(llm.stream("hello there world"))
    assert whole.content == "Echo: hello there world" and whole.usage.reported is False
    last = chunks[-1].usage
    assert last is not None and last.reported is False and last.completion_tokens == 0
    assert make_llm("openai").generate("hello there world").usage.reported is True


@pytest.mark.anyio
async def test_the_benchmark_counts_chunks_when_usage_is_unknown(make_llm: Any) -> None:
    from abstractcore.bench.prompts import Query
    from abstractcore.bench.sweep_config import GenParams
    from abstractcore.bench.systems import ProviderSystem

    llm = make_llm("openai", "no-usage")
    system = ProviderSystem("x", {})
    system.llm = llm
    query = Query("q", [{"role": "user", "content": "hello there world"}])
    result = await system.run_query(0, query, GenParams(max_output_tokens=8), 1)
    assert result.error is None and result.output_tokens == 4  # the streamed chunks
    assert len(result.gaps_s) == 3 and result.max_gap_s is not None  # 3 gaps between 4 chunks
    await llm.aclose()


def test_cached_tokens_are_reported(make_llm: Any) -> None:
    llm = make_llm("openai", "cached")
    assert llm.generate("hello there world").usage.cached_tokens == 3
    assert list(llm.stream("hello there world"))[-1].usage.cached_tokens == 3  # type: ignore[union-attr]


def test_top_k_is_rejected_by_openai_but_sent_to_compatible_servers(
    make_llm: Any, fake: Any
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_llm("openai").generate("hello there world", top_k=5)
    assert info.value.field == "top_k"
    compat = make_llm("openai-compatible")
    compat.generate("hello there world", top_k=5, max_output_tokens=9)
    (req,) = fake.requests(compat.model)
    assert req.json["top_k"] == 5
    assert req.json["max_tokens"] == 9 and "max_completion_tokens" not in req.json
    assert "authorization" not in req.headers  # no key, no header


def test_context_overflow_is_classified_by_code(make_llm: Any) -> None:
    with pytest.raises(ContextLengthError) as info:
        make_llm("openai", "context").generate("hello there world")
    assert info.value.status_code == 400 and info.value.field == "messages"


def test_bad_parameter_names_the_field(make_llm: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_llm("openai", "400").generate("hello there world")
    assert type(info.value) is InvalidRequestError and info.value.field == "temperature"


def test_defaults_from_the_constructor(make_llm: Any, fake: Any) -> None:
    llm = make_llm("lmstudio", temperature=0.0, max_output_tokens=3)
    assert llm.generate("hello there world").finish_reason == "length"
    (req,) = fake.requests(llm.model)
    assert req.json["temperature"] == 0.0 and req.json["max_tokens"] == 3


# ---------------------------------------------------------------------- configuration
def test_missing_api_key_names_the_setting_and_its_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError) as info:
        OpenAIProvider("gpt-4o-mini")
    assert info.value.setting == "api_key"
    assert "api_key" in str(info.value) and "OPENAI_API_KEY" in str(info.value)


def test_environment_settings(monkeypatch: pytest.MonkeyPatch, fake: Any) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url("openai"))
    with OpenAIProvider("ok~env") as llm:
        assert llm.base_url == fake.base_url("openai")
        assert llm.generate("hello there world").content == "Echo: hello there world"
    assert fake.requests("ok~env")[-1].headers["authorization"] == "Bearer sk-env"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIProvider("m").base_url == "https://api.openai.com/v1"


def test_compatible_needs_a_base_url_and_lmstudio_has_one() -> None:
    with pytest.raises(ConfigurationError) as info:
        OpenAICompatibleProvider("m")
    assert info.value.setting == "base_url"
    assert LMStudioProvider("m").base_url == "http://localhost:1234/v1"


def test_timeouts_are_split_connect_and_read() -> None:
    llm = LMStudioProvider("m", timeout=30)
    assert llm.timeout.connect == 5.0 and llm.timeout.read == 30.0
    assert LMStudioProvider("m").timeout.read == 600.0
    custom = httpx.Timeout(10.0, connect=1.0)
    assert LMStudioProvider("m", timeout=custom).timeout is custom


# ---------------------------------------------------------------------- mlx-lm's own server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlx_lm_server(embedded_model_dir: Path) -> Iterator[str]:
    """``python -m mlx_lm server`` on the embedded model; ready once /v1/models answers."""
    pytest.importorskip("mlx_lm")
    port = _free_port()
    env = dict(os.environ)
    # The reference BLAS of mlx[cpu] is ~30x slower (docs/architecture.md, "The machine under it")
    if _OPENBLAS.exists():
        env["LD_PRELOAD"] = str(_OPENBLAS)
    # A file, not a pipe, for its output: a full pipe would block the server's INFO logging.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm", "server", "--model", str(embedded_model_dir),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, log, base + "/v1/models", deadline_s=60.0)
            yield base + "/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(
    proc: subprocess.Popen[bytes], log: IO[bytes], url: str, *, deadline_s: float
) -> None:
    with httpx.Client(timeout=2.0) as client:
        for _ in range(int(deadline_s / 0.2)):
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            try:  # the pause between polls doubles as a check that the server did not die
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise RuntimeError(f"mlx_lm server exited with {proc.returncode}: {err[-2000:]}")
    raise RuntimeError(f"mlx_lm server not ready after {deadline_s}s")


@pytest.mark.mlx
@pytest.mark.slow
@pytest.mark.anyio
async def test_against_mlx_lm_server(mlx_lm_server: str) -> None:
    async with OpenAICompatibleProvider(
        "default_model", base_url=mlx_lm_server, temperature=0.0, max_output_tokens=12
    ) as llm:
        prompt = "What is the capital of France?"
        response = await llm.agenerate(prompt)
        chunks = [c async for c in llm.astream(prompt)]
    assert "Paris" in response.content
    assert response.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    # Greedy decoding: the stream says the same thing, ending with finish_reason and usage.
    assert "".join(c.content for c in chunks) == response.content
    assert chunks[-1].finish_reason == response.finish_reason
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        response.usage.prompt_tokens,
        response.usage.completion_tokens,
    )
    with OpenAICompatibleProvider("default_model", base_url=mlx_lm_server, temperature=0.0) as sync:
        assert sync.generate(prompt, max_output_tokens=12).content == response.content
