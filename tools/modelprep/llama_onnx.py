"""Test-fixture decoders: seeded random tiny weights (llama, or qwen2 with q/k/v biases) and
the byte-level fixture tokenizer. Real models come from GGUF files (`gguf_import`); the graph
itself is written by `fused_decoder`.
"""
from __future__ import annotations

import math

import numpy as np

from .fused_decoder import ARCHITECTURES, Config


# --------------------------------------------------------------------------- weights


def random_weights(cfg: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights scaled so logits are peaked (clear greedy margins)."""
    rng = np.random.default_rng(seed)
    H, NH, KVH, D, F = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                        cfg.head_dim, cfg.intermediate_size)

    def lin(out_f: int, in_f: int) -> np.ndarray:
        return (rng.standard_normal((out_f, in_f)) / math.sqrt(in_f)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((cfg.vocab_size, H)).astype(np.float32)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(H)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(H)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = lin(NH * D, H)
        w[p + "self_attn.k_proj.weight"] = lin(KVH * D, H)
        w[p + "self_attn.v_proj.weight"] = lin(KVH * D, H)
        w[p + "self_attn.o_proj.weight"] = lin(H, NH * D)
        w[p + "mlp.gate_proj.weight"] = lin(F, H)
        w[p + "mlp.up_proj.weight"] = lin(F, H)
        w[p + "mlp.down_proj.weight"] = lin(H, F)
    w["model.norm.weight"] = np.ones(H, np.float32)
    # untied head with a large scale: logits vary from step to step and have clear margins
    # (a tied head makes a random model just repeat its last input token)
    w["lm_head.weight"] = (3.0 * rng.standard_normal((cfg.vocab_size, H)) / math.sqrt(H)).astype(np.float32)
    if ARCHITECTURES[cfg.model_type]["qkv_bias"]:
        # drawn last, so a llama fixture's weights do not depend on this branch
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            for n, rows in (("q", NH * D), ("k", KVH * D), ("v", KVH * D)):
                w[p + f"self_attn.{n}_proj.bias"] = (0.5 * rng.standard_normal(rows)).astype(np.float32)
    return w


# --------------------------------------------------------------------------- tokenizer.json


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer_json(cfg: Config) -> dict:
    """Byte-level BPE without merges: ids 0..255 = bytes, then the special tokens."""
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    specials = [(cfg.bos_token_id, "<|bos|>"), (cfg.eos_token_id, "<|eos|>"), (cfg.pad_token_id, "<|pad|>")]
    for i, t in specials:
        vocab[t] = i
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
