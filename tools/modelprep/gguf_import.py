"""GGUF files (llama.cpp's format) -> what the fused decoder builder needs: the config, a lazy
weight source (one tensor dequantized at a time), the tokenizer rebuilt from the file's
vocabulary, the chat template and end-of-sequence ids.

Supported architectures: llama (SmolLM2, Llama 3) and qwen2 (Qwen2.5). Anything else is refused
with what was found. A truncated or corrupt file is refused before anything is written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .chat import CHATML
from .fused_decoder import ARCHITECTURES, Config

# The Qwen2 pre-tokenizer split (as in Qwen2's tokenizer.json and llama.cpp's `qwen2` pre type)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# per-layer tensors: HF-style name (after `model.layers.N.`) -> GGUF name (after `blk.N.`)
HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
}


class ImportRefused(Exception):
    """The file cannot be imported; the message says what was found and what is supported."""


@dataclass
class ChatTemplate:
    message: str
    generation_prompt: str
    default_system: str | None
    # the tool-call format the template teaches ("hermes": <tools> in the system turn,
    # <tool_call> JSON in the reply, <tool_response> back), or None
    tools: str | None = None


@dataclass
class Imported:
    cfg: Config
    weights: Callable[[str], np.ndarray]
    tokenizer: object  # tokenizers.Tokenizer
    eos_token_ids: list[int]
    chat_template: ChatTemplate | None
    name: str
    tied: bool
    # GGUF quantization of the main weights, e.g. "Q4_K" (for the manifest's description)
    source_quant: str
    meta: dict = field(default_factory=dict)


def _reader(path: str):
    from gguf import GGUFReader

    if not os.path.isfile(path):
        raise ImportRefused(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ImportRefused(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF')")
    try:
        return GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/IndexError/... on a truncated file
        raise ImportRefused(f"{path}: the GGUF file is truncated or corrupt ({type(e).__name__}: {e})") from None


def _chatml(template: str | None) -> ChatTemplate | None:
    """The file's Jinja template, if it is ChatML (the agent renders {role}/{content} turns)."""
    if not template or "<|im_start|>" not in template:
        return None
    m = re.search(r"<\|im_start\|>system\\n(.+?)<\|im_end\|>", template) or \
        re.search(r"'<\|im_start\|>system\\n' \+ '(.+?)'", template) or \
        re.search(r"<\|im_start\|>system\n(.+?)<\|im_end\|>", template)
    system = m.group(1) if m else None
    if system and ("{" in system or "'" in system):
        system = None
    tools = "hermes" if "<tool_call>" in template and "<tools>" in template else None
    return ChatTemplate(CHATML["message"], CHATML["generation_prompt"], system, tools)


def load(path: str, max_context: int = 8192) -> Imported:
    """Reads `path` lazily: nothing is dequantized until `weights(name)` is called."""
    from gguf.quants import dequantize

    r = _reader(path)
    f = r.fields

    def val(key, default=None):
        return f[key].contents() if key in f else default

    arch = val("general.architecture")
    if arch not in ARCHITECTURES:
        raise ImportRefused(f"{path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    NH, KVH = int(val(f"{arch}.attention.head_count")), int(val(f"{arch}.attention.head_count_kv", 0) or 0)
    KVH = KVH or NH
    H = int(val(f"{arch}.embedding_length"))
    tokens = val("tokenizer.ggml.tokens")
    if not tokens:
        raise ImportRefused(f"{path}: the file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    cfg = Config(
        vocab_size=len(tokens), hidden_size=H, num_hidden_layers=int(val(f"{arch}.block_count")),
        num_attention_heads=NH, num_key_value_heads=KVH,
        head_dim=int(val(f"{arch}.attention.key_length", H // NH)),
        intermediate_size=int(val(f"{arch}.feed_forward_length")),
        rope_theta=float(val(f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(val(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=min(int(val(f"{arch}.context_length", 2048)), max_context),
        bos_token_id=int(val("tokenizer.ggml.bos_token_id", 0)),
        eos_token_id=int(val("tokenizer.ggml.eos_token_id", 0)),
        pad_token_id=int(val("tokenizer.ggml.padding_token_id", val("tokenizer.ggml.eos_token_id", 0))),
        model_type=arch,
    )
    tensors = {t.name: t for t in r.tensors}
    need = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{n}.weight" for i in range(cfg.num_hidden_layers)
        for n in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    if ARCHITECTURES[arch]["qkv_bias"]:
        need += [f"blk.{i}.attn_{n}.bias" for i in range(cfg.num_hidden_layers) for n in "qkv"]
    missing = [n for n in need if n not in tensors]
    if missing:
        raise ImportRefused(f"{path}: {len(missing)} tensors a {arch} model needs are missing (first: {missing[0]})")
    size = os.path.getsize(path)
    for t in tensors.values():
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ImportRefused(f"{path}: the GGUF file is truncated (tensor {t.name} ends at byte {end:,}, "
                                f"the file has {size:,})")

    mapped = getattr(r.data, "_mmap", None)

    def release() -> None:
        # the file is read once, tensor by tensor: its pages need not stay resident
        if mapped is not None and hasattr(mapped, "madvise"):
            import mmap

            mapped.madvise(mmap.MADV_DONTNEED)

    def deq(name: str) -> np.ndarray:
        try:
            return _deq(name)
        finally:
            release()

    def _deq(name: str) -> np.ndarray:
        t = tensors[name]
        shape = [int(d) for d in reversed(list(t.shape))]  # GGUF dims are reversed -> [out, in]
        data = t.data
        if data.ndim == 2 and data.shape[0] == shape[0] and shape[0] > 8192:
            # a large table (embedding, head) in row chunks: the dequantizer's temporaries
            # are several times its output, so they stay small next to the result
            out = np.empty(shape, np.float32)
            for r in range(0, shape[0], 8192):
                out[r:r + 8192] = dequantize(data[r:r + 8192], t.tensor_type).reshape(-1, *shape[1:])
            return out
        return dequantize(data, t.tensor_type).astype(np.float32).reshape(shape)

    def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
        # llama.cpp's convert script interleaves llama's Q/K rows; undo it (rotate-half layout)
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    tied = "output.weight" not in tensors

    def weights(name: str) -> np.ndarray:
        if name == "model.embed_tokens.weight":
            return deq("token_embd.weight")
        if name == "model.norm.weight":
            return deq("output_norm.weight")
        if name == "lm_head.weight":
            return deq("token_embd.weight" if tied else "output.weight")
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if not m or m.group(2) not in HF_TO_GGUF:
            raise KeyError(name)
        w = deq(f"blk.{m.group(1)}.{HF_TO_GGUF[m.group(2)]}")
        if arch == "llama" and m.group(2) == "self_attn.q_proj.weight":
            w = unpermute(w, NH)
        elif arch == "llama" and m.group(2) == "self_attn.k_proj.weight":
            w = unpermute(w, KVH)
        return w

    def rows(name: str, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of a table (embedding or head), without dequantizing the rest."""
        if name != "lm_head.weight":
            return weights(name)[r0:r1]
        t = tensors["token_embd.weight" if tied else "output.weight"]
        shape = [int(d) for d in reversed(list(t.shape))]
        try:
            return dequantize(t.data[r0:r1], t.tensor_type).astype(np.float32).reshape(-1, *shape[1:])
        finally:
            release()

    weights.rows = rows  # type: ignore[attr-defined]
    weights.shape = lambda name: [int(d) for d in reversed(list(  # type: ignore[attr-defined]
        tensors["token_embd.weight" if tied or name != "lm_head.weight" else "output.weight"].shape))]

    tok = _tokenizer(path, val, tokens)
    types = val("tokenizer.ggml.token_type") or []
    eos = [cfg.eos_token_id]
    # chat models also end a turn with <|endoftext|> / <|im_end|>: stop on whichever comes
    for special in ("<|im_end|>", "<|endoftext|>"):
        if special in tokens:
            i = tokens.index(special)
            if i not in eos and int(types[i]) == 3:
                eos.append(i)
    qtypes = {}
    for t in tensors.values():
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            qtypes[t.tensor_type.name] = qtypes.get(t.tensor_type.name, 0) + 1
    return Imported(cfg=cfg, weights=weights, tokenizer=tok, eos_token_ids=eos,
                    chat_template=_chatml(val("tokenizer.chat_template")),
                    name=str(val("general.name", os.path.basename(path))), tied=tied,
                    source_quant=max(qtypes, key=qtypes.get) if qtypes else "?",
                    meta={"license": val("general.license"), "add_bos": bool(val("tokenizer.ggml.add_bos_token", False))})


def _tokenizer(path: str, val, tokens):
    """tokenizer.json from the GGUF's byte-level BPE vocabulary and merges."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if val("tokenizer.ggml.model") != "gpt2":
        raise ImportRefused(f"{path}: tokenizer {val('tokenizer.ggml.model')!r} is not supported "
                            "(supported: byte-level BPE, tokenizer.ggml.model = 'gpt2')")
    merges = [tuple(m.split(" ", 1)) for m in val("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = val("tokenizer.ggml.pre")
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        seq = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if pre in ("smollm", "starcoder", "refact"):  # these split every digit first
            seq.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence(seq)
    tok.decoder = decoders.ByteLevel()
    types = val("tokenizer.ggml.token_type")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s, ty in zip(tokens, types) if int(ty) == 3])  # 3 = CONTROL
    return tok
