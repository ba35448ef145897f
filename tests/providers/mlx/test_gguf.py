"""GGUF -> MLX conversion: a synthetic llama GGUF checked against mlx-lm's own llama, and the
real embedded Q4_1 file kept quantized."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

mx = pytest.importorskip("mlx.core")

from gguf_factory import LAYERS, tiny_llama_gguf

from abstractcore.errors import InvalidRequestError, ModelNotFoundError
from abstractcore.providers.mlx import gguf as gguf_mod
from abstractcore.providers.mlx.gguf import convert_gguf

pytestmark = pytest.mark.mlx


def _reference_logits(hf: dict[str, Any], config: dict[str, Any], ids: list[int]) -> Any:
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.load_weights(list(hf.items()))
    return model(mx.array([ids]))


@pytest.mark.parametrize(("dtype", "tied"), [("float32", True), ("float16", False)])
def test_synthetic_llama_matches_mlx_lm_llama(tmp_path: Path, dtype: str, tied: bool) -> None:
    from mlx_lm import load

    hf = tiny_llama_gguf(tmp_path / "tiny.gguf", dtype=getattr(mx, dtype), tied=tied)
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is tied
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
        4,
        2,
        16,
    )
    assert "quantization" not in config

    model, tokenizer = load(str(out))
    ids = [1, 40, 50, 60, 70, 80, 90, 100, 2]  # several positions, so a wrong RoPE layout shows
    got = model(mx.array([ids]))
    assert got.dtype == mx.float32
    want = _reference_logits({k: v.astype(mx.float32) for k, v in hf.items()}, config, ids)
    assert mx.allclose(got, want, atol=1e-4).item()
    # The permuted GGUF rows, loaded without un-permuting, would give other logits.
    assert tokenizer.eos_token_ids == {2}


def test_tokenizer_rebuilt_from_metadata(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny", dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(out))
    text = "<|im_start|>user\nsay the 42<|im_end|>"
    ids = tok.encode(text)
    assert ids[0] == 1 and ids[-1] == 2  # specials stay whole
    assert tok.convert_ids_to_tokens(ids[1:-1])[-3:] == ["Ġ", "4", "2"]  # smollm splits digits
    assert "Ġthe" in tok.convert_ids_to_tokens(ids)  # merges applied
    assert tok.decode(ids) == text
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"


def test_embedded_q4_1_kept_quantized(
    tmp_path: Path, embedded_model_dir: Path, embedded_gguf: Path
) -> None:
    from mlx_lm import load

    out = convert_gguf(embedded_gguf, tmp_path / "q4", dtype="keep")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    assert (
        sum(f.stat().st_size for f in out.glob("*.safetensors")) < 120e6
    )  # stayed ~4.5 bits/weight
    q_model, _ = load(str(out))
    f_model, _ = load(str(embedded_model_dir))
    # The float32 directory is the dequantization of the same (un-permuted) values: exact.
    q_proj = q_model.model.layers[3].self_attn.q_proj
    dequantized = mx.dequantize(q_proj.weight, q_proj.scales, q_proj.biases, group_size=32, bits=4)
    assert mx.array_equal(
        dequantized.astype(mx.float32), f_model.model.layers[3].self_attn.q_proj.weight
    ).item()
    ids = mx.array([[1, 4093, 198, 1780]])  # short: MLX's quantized matmul is slow on CPU
    q_logits, f_logits = q_model(ids)[0, -1], f_model(ids)[0, -1]
    assert mx.abs(q_logits.astype(mx.float32) - f_logits).max().item() < 0.5
    assert mx.argmax(q_logits).item() == mx.argmax(f_logits).item()


def test_bad_inputs_raise_typed_errors(tmp_path: Path) -> None:
    tiny_llama_gguf(tmp_path / "gemma.gguf", arch="gemma")
    with pytest.raises(InvalidRequestError, match="architecture 'gemma'") as info:
        convert_gguf(tmp_path / "gemma.gguf", tmp_path / "out")
    assert info.value.field == "model"
    with pytest.raises(InvalidRequestError) as info:
        convert_gguf(tmp_path / "gemma.gguf", tmp_path / "out", dtype="int3")
    assert info.value.field == "dtype"
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(InvalidRequestError, match="not a readable GGUF"):
        convert_gguf(tmp_path / "junk.gguf", tmp_path / "out")
    with pytest.raises(ModelNotFoundError):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_llama_gguf(tmp_path / "tiny.gguf")

    def disk_full(directory: Path, weights: dict[str, Any], progress: Any) -> None:
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_mod, "_save_weights", disk_full)
    with pytest.raises(OSError, match="No space"):
        convert_gguf(tmp_path / "tiny.gguf", tmp_path / "cache" / "tiny")
    assert list((tmp_path / "cache").iterdir()) == []  # neither the target nor a temp dir


def test_progress_reports_every_stage(tmp_path: Path) -> None:
    tiny_llama_gguf(tmp_path / "tiny.gguf")
    seen: list[tuple[str, int, int | None]] = []
    convert_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny", progress=lambda *a: seen.append(a))
    convert = [s for s in seen if s[0] == "convert"]
    assert convert[-1][1] == convert[-1][2] == 2 + LAYERS * 9  # every tensor group, in order
    assert seen[-1] == ("write", 1, 1)


def test_sentencepiece_tokenizer_rebuilt_from_scores(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from abstractcore.providers.mlx.gguf import gguf_tokenizer

    pieces = ["ll", "▁h", "▁he", "llo", "▁hello", "or", "▁w", "▁wor", "ld", "▁world"]
    letters = ["▁", "h", "e", "l", "o", "w", "r", "d"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + letters + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(letters) + len(pieces))
    scores = [0.0] * 259 + [-100.0] * len(letters) + [-1.0 - i for i in range(len(pieces))]
    metadata = {
        "general.architecture": "llama",
        "llama.context_length": 128,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    tokenizer_json, config = gguf_tokenizer(metadata)
    (tmp_path / "tokenizer.json").write_text(tokenizer_json)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = tok.encode("hello world\n")
    # BOS by default (llama.cpp's rule for sentencepiece), merges by score, "\n" as a byte
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁hello", "▁world", "<0x0A>"]
    for text in ("hello world\n", "héllo  world "):
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok.encode("wor</s>")) == ["<s>", "▁wor", "</s>"]
    assert tok.convert_ids_to_tokens(tok.encode("é")) == ["<s>", "▁", "<0xC3>", "<0xA9>"]
