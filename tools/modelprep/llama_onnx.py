"""Llama-style decoder graphs for ONNX Runtime with the Optimum KV-cache I/O names.

Owned by the project (adapted from the team's verified recipe). Builds the graph with
onnx.helper from standard ops, imports a llama-architecture GGUF (SmolLM2) with its
tokenizer, makes seeded random tiny weights for test fixtures, and quantizes to int8
(per-tensor dynamic) and 4-bit (MatMulNBits, 8-bit lm_head).

I/O: input_ids, attention_mask, position_ids (int64), past_key_values.{i}.key/.value
(float [batch, kv_heads, past, head_dim]) -> logits, present.{i}.key/.value.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21  # >= 18 (ReduceMean takes axes as an input)


@dataclass
class Config:
    vocab_size: int = 259
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 512
    bos_token_id: int = 256
    eos_token_id: int = 257
    pad_token_id: int = 258
    model_type: str = "llama"


# --------------------------------------------------------------------------- graph


class _G:
    """Tiny helper around onnx.helper: unique names, constants, node emission."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        arr = np.array(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.name("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], out: str | None = None, node_name: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name or self.name(op_type), **attrs))
        return out


def _rope_tables(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim))
    freqs = np.outer(np.arange(cfg.max_position_embeddings, dtype=np.float64), inv)
    emb = np.concatenate([freqs, freqs], axis=-1)  # HF rotate_half layout
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def build_model(cfg: Config, w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """w: HF-style weights (Linear weights are [out, in]); see random_weights()."""
    g = _G()
    H, NH, KVH, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    REP = NH // KVH
    assert NH % KVH == 0 and D % 2 == 0
    f32 = np.float32

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab_size])]
    for i in range(cfg.num_hidden_layers):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kv}", TensorProto.FLOAT, ["batch_size", KVH, "past_sequence_length", D]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kv}", TensorProto.FLOAT, ["batch_size", KVH, "total_sequence_length", D]))

    # lengths: P = past length, T = P + S
    P = g.op("Gather", [g.op("Shape", ["past_key_values.0.key"]), g.const(2)], axis=0)
    S = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(1)], axis=0)
    T = g.op("Add", [P, S])

    # additive attention bias [B,1,1,S,T]: causal (index space) AND attention_mask
    q_pos = g.op("Unsqueeze", [g.op("Range", [P, T, g.const(1)]), g.const([1])])   # [S,1]
    k_pos = g.op("Unsqueeze", [g.op("Range", [g.const(0), T, g.const(1)]), g.const([0])])  # [1,T]
    causal = g.op("LessOrEqual", [k_pos, q_pos])                                    # [S,T]
    pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), g.const([1, 2, 3])])  # [B,1,1,1,T]
    allowed = g.op("And", [causal, pad])                                            # [B,1,1,S,T]
    bias = g.op("Where", [allowed, g.const(0.0, f32), g.const(np.finfo(np.float32).min, f32)])

    # rotary tables gathered by position_ids -> [B,1,S,D]
    cos_t, sin_t = _rope_tables(cfg)
    # (named so quantizers can skip them: int8 cos/sin tables would wreck the rotary phases)
    cos = g.op("Unsqueeze", [g.op("Gather", [g.init("rope.cos", cos_t), "position_ids"], node_name="rope_cos_gather", axis=0), g.const([1])])
    sin = g.op("Unsqueeze", [g.op("Gather", [g.init("rope.sin", sin_t), "position_ids"], node_name="rope_sin_gather", axis=0), g.const([1])])

    def rms_norm(x: str, weight: str) -> str:
        var = g.op("ReduceMean", [g.op("Mul", [x, x]), g.const([-1])], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(cfg.rms_norm_eps, f32)])])])
        return g.op("Mul", [g.op("Mul", [x, inv]), g.init(weight, w[weight].astype(f32))])

    def linear(x: str, weight: str) -> str:  # x @ W^T, W stored transposed as [in, out]
        return g.op("MatMul", [x, g.init(weight, np.ascontiguousarray(w[weight].T.astype(f32)))])

    def rope(x: str) -> str:
        half = D // 2
        x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([3])])
        x2 = g.op("Slice", [x, g.const([half]), g.const([D]), g.const([3])])
        rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=3)
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])])

    def heads(x: str, n: int) -> str:  # [B,S,n*D] -> [B,n,S,D]
        return g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0, n, D])])], perm=[0, 2, 1, 3])

    x = g.op("Gather", [g.init("model.embed_tokens.weight", w["model.embed_tokens.weight"].astype(f32)), "input_ids"],
             node_name="embed_gather", axis=0)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, p + "input_layernorm.weight")
        q = rope(heads(linear(h, p + "self_attn.q_proj.weight"), NH))
        k = rope(heads(linear(h, p + "self_attn.k_proj.weight"), KVH))
        v = heads(linear(h, p + "self_attn.v_proj.weight"), KVH)
        k_all = g.op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = g.op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        # grouped-query attention without materialising repeated K/V:
        q5 = g.op("Reshape", [q, g.const([0, KVH, REP, -1, D])])                        # [B,KVH,REP,S,D]
        k5 = g.op("Transpose", [g.op("Unsqueeze", [k_all, g.const([2])])], perm=[0, 1, 2, 4, 3])  # [B,KVH,1,D,T]
        v5 = g.op("Unsqueeze", [v_all, g.const([2])])                                   # [B,KVH,1,T,D]
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q5, k5]), g.const(1.0 / math.sqrt(D), f32)]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v5])                  # [B,KVH,REP,S,D]
        ctx = g.op("Transpose", [g.op("Reshape", [ctx, g.const([0, NH, -1, D])])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const([0, 0, NH * D])])
        x = g.op("Add", [x, linear(ctx, p + "self_attn.o_proj.weight")])
        h = rms_norm(x, p + "post_attention_layernorm.weight")
        gate = linear(h, p + "mlp.gate_proj.weight")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), linear(h, p + "mlp.up_proj.weight")])
        x = g.op("Add", [x, linear(act, p + "mlp.down_proj.weight")])
    x = rms_norm(x, "model.norm.weight")
    g.op("MatMul", [x, g.init("lm_head.weight.T", np.ascontiguousarray(w["lm_head.weight"].T.astype(f32)))], "logits",
         node_name="lm_head_matmul")

    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgewise-modelprep")
    model.ir_version = 10
    return model


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


# --------------------------------------------------------------------------- quantization


def quantize_int8(src: str, dst: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    # MatMul weights -> MatMulInteger (+ DynamicQuantizeLinear on activations); the token
    # embedding Gather -> int8 table + DequantizeLinear.  Rotary-table gathers stay fp32.
    quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gather"], per_channel=False,
                     weight_type=QuantType.QInt8, nodes_to_exclude=["rope_cos_gather", "rope_sin_gather"],
                     extra_options={"MatMulConstBOnly": True})


def quantize_int4(src: str, dst: str, block_size: int = 32) -> None:
    """Weight-only blockwise quantization (contrib ops, com.microsoft domain, opset 21):
    transformer MatMuls -> 4-bit MatMulNBits, token embedding -> 4-bit GatherBlockQuantized,
    lm_head -> 8-bit MatMulNBits (a 4-bit head wrecks SmolLM2-135M: ppl 11.9 and wrong answers;
    llama.cpp keeps it at Q8_0 too).  accuracy_level 4 = int8 activations inside the CPU kernel.
    Rotary-table gathers stay fp32."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    q = MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=block_size, is_symmetric=False,
                             accuracy_level=4, op_types_to_quantize=("MatMul", "Gather"),
                             quant_axes=(("MatMul", 0), ("Gather", 1)),
                             nodes_to_exclude=["rope_cos_gather", "rope_sin_gather", "lm_head_matmul"])
    q.process()
    q8 = MatMulNBitsQuantizer(q.model.model, bits=8, block_size=block_size, is_symmetric=False,
                              accuracy_level=4, op_types_to_quantize=("MatMul",), nodes_to_include=["lm_head_matmul"])
    q8.process()
    onnx.save(q8.model.model, dst)


