"""Weights and tokenizers for llama-architecture decoders: seeded random tiny weights for the
test fixtures, a GGUF import (SmolLM2) with its tokenizer, and the byte-level fixture tokenizer.
The graph itself is written by `fused_decoder`.
"""
from __future__ import annotations

import math

import numpy as np

from .fused_decoder import Config


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


# --------------------------------------------------------------------------- GGUF import


def load_gguf(path: str) -> tuple[Config, dict[str, np.ndarray], "object", dict]:
    """Read a llama-architecture GGUF (e.g. SmolLM2) -> Config, HF-style fp32 weights, tokenizer, meta."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    f = {k: v for k, v in r.fields.items()}

    def val(key, default=None):
        return f[key].contents() if key in f else default

    arch = val("general.architecture")
    if arch != "llama":
        raise SystemExit(f"only llama-architecture GGUF files are supported (got {arch!r})")
    NH, KVH = int(val("llama.attention.head_count")), int(val("llama.attention.head_count_kv"))
    H = int(val("llama.embedding_length"))
    tokens = val("tokenizer.ggml.tokens")
    cfg = Config(
        vocab_size=len(tokens), hidden_size=H, num_hidden_layers=int(val("llama.block_count")),
        num_attention_heads=NH, num_key_value_heads=KVH, head_dim=H // NH,
        intermediate_size=int(val("llama.feed_forward_length")),
        rope_theta=float(val("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(val("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(val("llama.context_length", 2048)),
        bos_token_id=int(val("tokenizer.ggml.bos_token_id", 1)),
        eos_token_id=int(val("tokenizer.ggml.eos_token_id", 2)),
        pad_token_id=int(val("tokenizer.ggml.padding_token_id", val("tokenizer.ggml.eos_token_id", 2))),
    )
    t = {x.name: x for x in r.tensors}

    def deq(name: str) -> np.ndarray:
        x = t[name]
        arr = dequantize(x.data, x.tensor_type).astype(np.float32)
        return arr.reshape([int(d) for d in reversed(list(x.shape))])  # GGUF dims are reversed -> [out, in]

    def unpermute(wt: np.ndarray, n_head: int) -> np.ndarray:
        # inverse of llama.cpp convert_hf_to_gguf LlamaModel.permute (interleaved -> rotate_half layout)
        return wt.reshape(n_head, wt.shape[0] // n_head // 2, 2, *wt.shape[1:]).swapaxes(1, 2).reshape(wt.shape)

    w = {"model.embed_tokens.weight": deq("token_embd.weight"), "model.norm.weight": deq("output_norm.weight")}
    w["lm_head.weight"] = deq("output.weight") if "output.weight" in t else w["model.embed_tokens.weight"]
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(cfg.num_hidden_layers):
        for src, dst in names.items():
            arr = deq(f"blk.{i}.{src}.weight")
            if src == "attn_q":
                arr = unpermute(arr, NH)
            elif src == "attn_k":
                arr = unpermute(arr, KVH)
            w[f"model.layers.{i}.{dst}.weight"] = arr

    # tokenizer.json from the GGUF BPE vocabulary (tokenizer.ggml.model == "gpt2")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    if val("tokenizer.ggml.model") != "gpt2":
        raise SystemExit("only byte-level BPE (tokenizer.ggml.model == 'gpt2') vocabularies are supported")
    merges = [tuple(m.split(" ", 1)) for m in val("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if val("tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):  # these split every digit first
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel()
    types = val("tokenizer.ggml.token_type")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s, ty in zip(tokens, types) if int(ty) == 3])  # 3 = CONTROL
    meta = {"chat_template": val("tokenizer.chat_template"), "name": val("general.name"),
            "license": val("general.license"), "add_bos_token": bool(val("tokenizer.ggml.add_bos_token", False))}
    return cfg, w, tok, meta
