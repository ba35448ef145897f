"""Writes small random llama models as GGUF files (llama.cpp's layout) for the MLX tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes (what byte-level BPE vocabularies use)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _llamacpp_permute(w: Any, n_head: int) -> Any:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (the spec we must undo)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def tiny_llama_gguf(
    path: Path, *, dtype: Any = None, tied: bool = True, arch: str = "llama"
) -> dict[str, Any]:
    """Write a random 2-layer llama as GGUF; returns its weights in Hugging Face layout."""
    dtype = dtype or mx.float32
    tokens = SPECIALS + _byte_alphabet() + ["Ġt", "he", "Ġthe"]
    merges = ["Ġ t", "h e", "Ġt he"]
    vocab = len(tokens)
    key = iter(mx.random.split(mx.random.key(7), 64))

    def rand(*shape: int) -> Any:
        return (0.05 * mx.random.normal(shape, key=next(key))).astype(dtype)

    hf: dict[str, Any] = {
        "model.embed_tokens.weight": rand(vocab, HIDDEN),
        "model.norm.weight": 1 + rand(HIDDEN),
    }
    gg: dict[str, Any] = {
        "token_embd.weight": hf["model.embed_tokens.weight"],
        "output_norm.weight": hf["model.norm.weight"],
    }
    if not tied:
        hf["lm_head.weight"] = gg["output.weight"] = rand(vocab, HIDDEN)
    kv_dim = HIDDEN // HEADS * KV_HEADS
    shapes = {
        "attn_q": ("self_attn.q_proj", (HIDDEN, HIDDEN)),
        "attn_k": ("self_attn.k_proj", (kv_dim, HIDDEN)),
        "attn_v": ("self_attn.v_proj", (kv_dim, HIDDEN)),
        "attn_output": ("self_attn.o_proj", (HIDDEN, HIDDEN)),
        "ffn_gate": ("mlp.gate_proj", (FFN, HIDDEN)),
        "ffn_up": ("mlp.up_proj", (FFN, HIDDEN)),
        "ffn_down": ("mlp.down_proj", (HIDDEN, FFN)),
        "attn_norm": ("input_layernorm", (HIDDEN,)),
        "ffn_norm": ("post_attention_layernorm", (HIDDEN,)),
    }
    for i in range(LAYERS):
        for g_name, (h_name, shape) in shapes.items():
            w = rand(*shape) + (1 if len(shape) == 1 else 0)
            hf[f"model.layers.{i}.{h_name}.weight"] = w
            if g_name in ("attn_q", "attn_k"):
                w = _llamacpp_permute(w, HEADS if g_name == "attn_q" else KV_HEADS)
            gg[f"blk.{i}.{g_name}.weight"] = w
    u32 = mx.uint32
    metadata = {
        "general.architecture": arch,
        f"{arch}.embedding_length": mx.array(HIDDEN, dtype=u32),
        f"{arch}.block_count": mx.array(LAYERS, dtype=u32),
        f"{arch}.feed_forward_length": mx.array(FFN, dtype=u32),
        f"{arch}.attention.head_count": mx.array(HEADS, dtype=u32),
        f"{arch}.attention.head_count_kv": mx.array(KV_HEADS, dtype=u32),
        f"{arch}.attention.layer_norm_rms_epsilon": mx.array(1e-5, dtype=mx.float32),
        f"{arch}.rope.freq_base": mx.array(10000.0, dtype=mx.float32),
        f"{arch}.context_length": mx.array(256, dtype=u32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array(
            [3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)), dtype=mx.int32
        ),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=u32),
        "tokenizer.ggml.eos_token_id": mx.array(2, dtype=u32),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": TEMPLATE,
    }
    mx.save_gguf(str(path), gg, metadata)
    return hf
