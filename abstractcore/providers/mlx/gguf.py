"""GGUF -> MLX model directory conversion (llama-family models).

``mx.load`` reads GGUF natively: Q4_0/Q4_1 tensors arrive as MLX 4-bit affine (group 32),
Q8_0 as 8-bit, F16/F32 as they are. What is left to do here is mapping names to the Hugging
Face llama layout, undoing llama.cpp's q/k row permutation, optionally dequantizing, and
rebuilding ``config.json`` and the tokenizer from the GGUF metadata, so that the result is a
plain directory ``mlx_lm.load`` and ``mlx_lm server --model DIR`` both accept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from abstractcore.errors import InvalidRequestError, ModelNotFoundError

__all__ = ["DTYPES", "Progress", "convert_gguf", "gguf_config", "gguf_tokenizer"]

#: (stage, done, total): stages are "download", "convert" and "write".
Progress = Callable[[str, int, "int | None"], None]

#: Target weight types: a float type dequantizes everything, "keep" keeps quantized tensors.
DTYPES = ("float32", "float16", "bfloat16", "keep")

_SUPPORTED_ARCHS = ("llama",)
_SHARD_BYTES = 4 << 30

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp stores Llama-3.1 rope scaling as a tensor we cannot express in a config; skipped.
_SKIPPED = {"rope_freqs"}

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (llama.cpp's names).
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""  # noqa: E501
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# GGUF token types (llama.cpp's llama_token_type).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


def _meta(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    """A metadata value as a Python scalar / list (mx.load returns 0-d arrays for numbers)."""
    value = metadata.get(key, default)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _arch(metadata: dict[str, Any], source: str) -> str:
    arch = _meta(metadata, "general.architecture")
    if arch not in _SUPPORTED_ARCHS:
        raise InvalidRequestError(
            f"{source}: GGUF architecture {arch!r} is not supported "
            f"(only {', '.join(_SUPPORTED_ARCHS)})",
            field="model",
        )
    return str(arch)


def gguf_config(metadata: dict[str, Any], *, source: str = "gguf") -> dict[str, Any]:
    """The Hugging Face style ``config.json`` for a llama-family GGUF's metadata."""
    arch = _arch(metadata, source)

    def m(key: str, default: Any = None) -> Any:
        return _meta(metadata, f"{arch}.{key}", default)

    hidden = int(m("embedding_length"))
    heads = int(m("attention.head_count"))
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(m("block_count")),
        "intermediate_size": int(m("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(m("attention.head_count_kv", heads)),
        "head_dim": int(m("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": int(m("vocab_size", len(tokens))),
        "max_position_embeddings": int(m("context_length", 4096)),
        "rope_theta": float(m("rope.freq_base", 10000.0)),
        "rope_traditional": False,
        "attention_bias": False,
        "mlp_bias": False,
    }
    scaling = _meta(metadata, f"{arch}.rope.scaling.type")
    factor = _meta(metadata, f"{arch}.rope.scaling.factor")
    if scaling == "linear" and factor:
        config["rope_scaling"] = {"type": "linear", "factor": float(factor)}
    for name in ("bos", "eos", "padding"):
        token_id = _meta(metadata, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(token_id)
    return config


def _hf_name(name: str) -> str | None:
    """Map a GGUF tensor name (``blk.3.attn_q.scales``) to the HF llama name, None to skip."""
    base, _, suffix = name.rpartition(".")
    if match := re.fullmatch(r"blk\.(\d+)\.(\w+)", base):
        layer, part = match.groups()
        if part not in _LAYER_NAMES:
            raise InvalidRequestError(f"unexpected GGUF tensor {name!r}", field="model")
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"
    if base in _SKIPPED:
        return None
    if base not in _TOP_NAMES:
        raise InvalidRequestError(f"unexpected GGUF tensor {name!r}", field="model")
    return f"{_TOP_NAMES[base]}.{suffix}"


def _unpermute(x: Any, n_head: int) -> Any:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE pairs -> HF half-split layout)."""
    rows = x.shape[0]
    return x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _convert_weights(
    weights: dict[str, Any], config: dict[str, Any], dtype: str, progress: Progress | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rename, un-permute and (unless dtype is "keep") dequantize; returns (weights, quant)."""
    import mlx.core as mx

    target = None if dtype == "keep" else getattr(mx, dtype)
    out: dict[str, Any] = {}
    quant: dict[str, dict[str, Any]] = {}
    modules = sorted({k.rpartition(".")[0] for k in weights})
    for i, module in enumerate(modules):
        if progress is not None:
            progress("convert", i + 1, len(modules))
        hf = _hf_name(module + ".weight")
        if hf is None:
            continue
        hf_module = hf.rpartition(".")[0]
        w = weights[module + ".weight"]
        scales = weights.get(module + ".scales")
        biases = weights.get(module + ".biases")
        parts = (
            {"weight": w} if scales is None else {"weight": w, "scales": scales, "biases": biases}
        )
        if module.endswith((".attn_q", ".attn_k")):
            heads = config["num_attention_heads" if module.endswith("q") else "num_key_value_heads"]
            parts = {k: _unpermute(v, heads) for k, v in parts.items()}
        if scales is not None:
            # mx.load packs every GGUF quant type in groups of 32 values along the rows
            group = 32
            bits = w.shape[-1] * 32 // (scales.shape[-1] * group)
            if target is not None:
                parts = {
                    "weight": mx.dequantize(
                        parts["weight"],
                        parts["scales"],
                        parts["biases"],
                        group_size=group,
                        bits=bits,
                    ).astype(target)
                }
            else:
                quant[hf_module] = {"group_size": group, "bits": bits, "mode": "affine"}
        elif target is not None and mx.issubdtype(w.dtype, mx.floating):
            parts = {"weight": parts["weight"].astype(target)}
        for k, v in parts.items():
            out[f"{hf_module}.{k}"] = v
    config["tie_word_embeddings"] = "lm_head.weight" not in out
    return out, quant


def _quantization_config(quant: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """mlx-lm's ``quantization`` entry: the most common setting plus per-module exceptions."""
    if not quant:
        return None
    settings = [json.dumps(q, sort_keys=True) for q in quant.values()]
    default = json.loads(max(set(settings), key=settings.count))
    config: dict[str, Any] = dict(default)
    for module, q in quant.items():
        if q != default:
            config[module] = q
    return config


def _byte_level_bpe(metadata: dict[str, Any], tokens: list[str]) -> Any:
    """GPT-2 style byte-level BPE (``tokenizer.ggml.model == "gpt2"``): SmolLM, Llama 3, ..."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = _meta(metadata, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        steps = [pre_tokenizers.Split(Regex(_GPT2_PATTERN), behavior="isolated"), byte_level]
        if pre == "smollm":  # SmolLM's tokenizer splits digits one by one before the GPT-2 regex
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _sentencepiece_bpe(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Any:
    """SentencePiece BPE with byte fallback (``tokenizer.ggml.model == "llama"``): Llama 2, Mistral.

    GGUF keeps scores instead of merges: the merges are every split of a token into two known
    pieces, best-scored token first (what transformers' sentencepiece converter does).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    scores: list[float] = _meta(metadata, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    mergeable = {tok: score for tok, score, t in zip(tokens, scores, types) if t == _NORMAL}
    ranked: list[tuple[float, int, int, str, str]] = []
    for tok, score in mergeable.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    unk_id = _meta(metadata, "tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    prefix = bool(_meta(metadata, "tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def gguf_tokenizer(metadata: dict[str, Any], *, source: str = "gguf") -> tuple[str, dict[str, Any]]:
    """``(tokenizer.json text, tokenizer_config dict)`` rebuilt from GGUF tokenizer metadata."""
    from tokenizers import AddedToken, processors

    kind = _meta(metadata, "tokenizer.ggml.model")
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    types: list[int] = _meta(metadata, "tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(metadata, tokens)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(metadata, tokens, types)
    else:
        raise InvalidRequestError(
            f"{source}: GGUF tokenizer model {kind!r} is not supported "
            "(byte-level BPE 'gpt2' and sentencepiece 'llama' are)",
            field="model",
        )
    vocab = {tok: i for i, tok in enumerate(tokens)}

    special = [
        AddedToken(tok, special=t == _CONTROL, normalized=False)
        for tok, t in zip(tokens, types)
        if t in (_CONTROL, _USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in special if t.special])
    tokenizer.add_tokens([t for t in special if not t.special])

    def token(key: str) -> str | None:
        token_id = _meta(metadata, f"tokenizer.ggml.{key}_token_id")
        return (
            tokens[int(token_id)] if token_id is not None and int(token_id) < len(tokens) else None
        )

    bos, eos = token("bos"), token("eos")
    # llama.cpp adds BOS to a sentencepiece vocabulary whose file does not say otherwise
    add_bos_default = kind == "llama"
    add_bos = bool(_meta(metadata, "tokenizer.ggml.add_bos_token", add_bos_default))
    add_bos = add_bos and bos is not None
    if add_bos and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": token("unknown"),
        "pad_token": token("padding") or eos,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_meta(metadata, f"{_arch(metadata, source)}.context_length", 4096)),
    }
    if template := metadata.get("tokenizer.chat_template"):
        config["chat_template"] = str(template)
    return tokenizer.to_str(), {k: v for k, v in config.items() if v is not None}


def _save_weights(directory: Path, weights: dict[str, Any], progress: Progress | None) -> None:
    """Write ``model.safetensors`` (or shards + index above 4 GiB), as mlx-lm expects."""
    import mlx.core as mx

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name in sorted(weights):
        nbytes = weights[name].nbytes
        if shards[-1] and size + nbytes > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = weights[name]
        size += nbytes
    total = sum(w.nbytes for w in weights.values())
    index: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = (
            "model.safetensors"
            if len(shards) == 1
            else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        mx.save_safetensors(str(directory / name), shard, metadata={"format": "mlx"})
        index.update(dict.fromkeys(shard, name))
        if progress is not None:
            progress("write", i + 1, len(shards))
    if len(shards) > 1:
        body = {"metadata": {"total_size": total}, "weight_map": index}
        (directory / "model.safetensors.index.json").write_text(json.dumps(body, indent=2))


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    progress: Progress | None = None,
) -> Path:
    """Convert a llama-family GGUF file into an MLX model directory at ``out_dir`` (atomically)."""
    if dtype not in DTYPES:
        raise InvalidRequestError(
            f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", field="dtype"
        )
    src, dest = Path(gguf_path), Path(out_dir)
    if not src.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {src}")
    import mlx.core as mx

    try:
        loaded = mx.load(str(src), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise InvalidRequestError(
            f"{src} is not a readable GGUF file: {exc}", field="model"
        ) from exc
    weights, metadata = cast("tuple[dict[str, Any], dict[str, Any]]", loaded)
    config = gguf_config(metadata, source=str(src))
    tokenizer_json, tokenizer_config = gguf_tokenizer(metadata, source=str(src))
    converted, quant = _convert_weights(weights, config, dtype, progress)
    if (quantization := _quantization_config(quant)) is not None:
        config["quantization"] = quantization
    config["torch_dtype"] = "float16" if dtype == "keep" else dtype

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model directory is not a secret
        _save_weights(tmp, converted, progress)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        gen = {
            k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():  # lost a race only if the winner finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
