"""Decoder graphs in ONNX Runtime's fused CPU layout (interface `fused-gqa`).

The layout ONNX Runtime GenAI's model builder emits for CPU, which ONNX Runtime runs as ~10
fused nodes per layer instead of hundreds of small ones:

- norms: `SimplifiedLayerNormalization` (layer 0's first) and
  `com.microsoft.SkipSimplifiedLayerNormalization` (every later one; it adds the residual);
- one packed QKV projection ([Wq; Wk; Wv], plus the packed bias where the architecture has one);
- `com.microsoft.GroupQueryAttention` with rotary caches: positions come from the per-row
  lengths (`seqlens_k`), so rows of different lengths share one decode step;
- logits of the last position only ([batch, 1, vocab]).

Weights are quantized one tensor at a time as the graph is written (never an fp32 graph
whole): `q4` = symmetric 4-bit `MatMulNBits` (block 32, accuracy_level 4: the int8-compute
kernels), `q8` = 8-bit (asymmetric, block 32, accuracy_level 4); the lm_head is 8-bit in both (a 4-bit head wrecks small
models); the token embedding is int8 with one scale per row. `fp32` keeps plain MatMuls (the
exact reference for tests).

I/O: input_ids int64 [batch, seq]; attention_mask int64 [batch, total] (row b: total_b ones,
then zeros); past_key_values.{i}.key/.value float [batch, kv_heads, capacity, head_dim], bound
as the same memory as present.{i}.key/.value (GroupQueryAttention then writes in place);
logits float [batch, 1, vocab].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21
INTERFACE = "fused-gqa"
BLOCK = 32

# architecture -> what differs in the graph (the weights' names are HF-style for all)
ARCHITECTURES = {
    "llama": {"qkv_bias": False},
    "qwen2": {"qkv_bias": True},
}


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


Weights = Callable[[str], np.ndarray]  # HF-style name -> fp32 array (Linear weights [out, in])


def _pack_nbits(w_kn: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[K, N] fp32 -> (packed uint8 [N, k_blocks, blob], scales fp32 [N * k_blocks], zero points
    (packed like the weights; None when symmetric))."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = w_kn.shape
    k_blocks = (k + BLOCK - 1) // BLOCK
    if k_blocks * BLOCK != k:
        w_kn = np.pad(w_kn, ((0, k_blocks * BLOCK - k), (0, 0)))
    w_kn = np.ascontiguousarray(w_kn, dtype=np.float32)
    packed = np.zeros((n, k_blocks, BLOCK * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, (k_blocks + (8 // bits) - 1) // (8 // bits)), dtype=np.uint8)
    fn = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    fn(packed, w_kn, scales, zero_points, BLOCK, n, k, symmetric)
    return packed, scales.reshape(-1), None if symmetric else zero_points.reshape(-1)


class _Graph:
    def __init__(self, quant: str) -> None:
        if quant not in ("fp32", "q4", "q8"):
            raise ValueError(f"quantization {quant!r}: expected fp32, q4 or q8")
        self.quant = quant
        # written straight into the model: helper.make_graph / make_model would copy every
        # initializer twice (a 1.5B model's peak memory tripled)
        self.model = onnx.ModelProto()
        self.graph = self.model.graph
        self._consts: dict[tuple, str] = {}
        self._n = 0

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        arr = np.array(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.fresh("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "",
           **attrs) -> list[str]:
        name = self.fresh(op_type)
        outs = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.graph.node.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs

    def linear(self, x: str, w_out_in, name: str, bits: int | None = None) -> str:
        """x @ W^T; quantized per the graph's mode (`bits` overrides it, e.g. the lm_head).
        `w_out_in` is an array [out, in], or (n, k, rows(r0, r1)) for a table read in chunks."""
        if isinstance(w_out_in, tuple):
            n, k, rows = w_out_in
        else:
            n, k = w_out_in.shape
            rows = lambda r0, r1, w=w_out_in: w[r0:r1]  # noqa: E731
        bits = bits if bits is not None else {"fp32": None, "q4": 4, "q8": 8}[self.quant]
        if self.quant == "fp32" or bits is None:
            return self.op("MatMul", [x, self.init(name, np.ascontiguousarray(rows(0, n).T, dtype=np.float32))])[0]
        # 4-bit symmetric (the faster kernels, measured); 8-bit asymmetric: on SmolLM2 its logits
        # stay closer to fp32 (max error 1.23 vs 1.68 on a chat prompt) and keep fp32's answer
        # where symmetric flips a near-tie
        # in chunks of output rows (a large head's transposed fp32 copy would double it)
        chunks = [_pack_nbits(rows(r, r + 16384).T, bits, symmetric=bits == 4) for r in range(0, n, 16384)]
        k_blocks = (k + BLOCK - 1) // BLOCK
        packed = np.concatenate([c[0] for c in chunks])
        scales = np.concatenate([c[1].reshape(-1, k_blocks) for c in chunks]).reshape(-1)
        zero_points = None if chunks[0][2] is None else np.concatenate(
            [c[2].reshape(c[0].shape[0], -1) for c in chunks]).reshape(-1)
        del chunks
        inputs = [x, self.init(name + f".q{bits}", packed), self.init(name + ".scales", scales)]
        if zero_points is not None:
            inputs.append(self.init(name + ".zero_points", zero_points))
        return self.op("MatMulNBits", inputs, domain="com.microsoft", K=k, N=n, bits=bits, block_size=BLOCK,
                       accuracy_level=4)[0]


def build(cfg: Config, weights: Weights, quant: str,
          progress: Callable[[int, int], None] | None = None) -> onnx.ModelProto:
    """The whole decoder; `weights` is called once per tensor, so a lazy source keeps only one
    fp32 tensor alive at a time. `progress(layers_done, layers)` is called as layers are written."""
    if cfg.model_type not in ARCHITECTURES:
        raise ValueError(f"architecture {cfg.model_type!r}: supported are {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[cfg.model_type]
    g = _Graph(quant)
    NH, KVH, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    assert NH % KVH == 0 and D % 2 == 0

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 1, cfg.vocab_size])]
    for i in range(cfg.num_hidden_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch_size", KVH, "max_sequence_length", D]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", TensorProto.FLOAT, ["batch_size", KVH, "max_sequence_length", D]))

    # per-row lengths from the mask: seqlens_k[b] = total_b - 1; total = the mask's width
    summed = g.op("ReduceSum", ["attention_mask", g.const([1])], keepdims=0)[0]
    seqlens_k = g.op("Cast", [g.op("Sub", [summed, g.const(1)])[0]], to=TensorProto.INT32)[0]
    width = g.op("Gather", [g.op("Shape", ["attention_mask"])[0], g.const(1)], axis=0)[0]
    total_len = g.op("Cast", [width], to=TensorProto.INT32)[0]

    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, D, 2, dtype=np.float64) / D))
    freqs = np.outer(np.arange(cfg.max_position_embeddings, dtype=np.float64), inv)
    cos_cache = g.init("rope.cos_cache", np.cos(freqs).astype(np.float32))
    sin_cache = g.init("rope.sin_cache", np.sin(freqs).astype(np.float32))

    emb = weights("model.embed_tokens.weight")
    if quant == "fp32":
        x = g.op("Gather", [g.init("model.embed_tokens.weight", emb.astype(np.float32)), "input_ids"], axis=0)[0]
    else:
        # int8 rows with one scale each: a token reads one row, so 4 bits would save little.
        # In row chunks, so the fp32 temporaries stay small next to the table itself.
        scale = np.empty((emb.shape[0], 1), np.float32)
        q = np.empty(emb.shape, np.int8)
        for r in range(0, emb.shape[0], 8192):
            part = emb[r:r + 8192]
            scale[r:r + 8192] = np.maximum(np.abs(part).max(axis=1, keepdims=True), 1e-8) / 127.0
            q[r:r + 8192] = np.clip(np.round(part / scale[r:r + 8192]), -127, 127)
        rows = g.op("Gather", [g.init("model.embed_tokens.q8", q), "input_ids"], axis=0)[0]
        s = g.op("Gather", [g.init("model.embed_tokens.scales", scale.astype(np.float32)), "input_ids"], axis=0)[0]
        x = g.op("Mul", [g.op("Cast", [rows], to=TensorProto.FLOAT)[0], s])[0]
    del emb  # one fp32 tensor alive at a time (the lm_head is read at the end)

    residual = x
    delta = None  # what the next norm adds to the residual
    eps = float(cfg.rms_norm_eps)

    def norm(gamma_name: str) -> str:
        nonlocal residual
        gamma = g.init(gamma_name, weights(gamma_name).astype(np.float32))
        if delta is None:
            return g.op("SimplifiedLayerNormalization", [residual, gamma], axis=-1, epsilon=eps, stash_type=1)[0]
        normed, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization", [delta, residual, gamma],
            [g.fresh("normed"), "", "", g.fresh("residual")], domain="com.microsoft", epsilon=eps)
        return normed

    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = norm(p + "input_layernorm.weight")
        wqkv = np.concatenate([weights(p + f"self_attn.{n}_proj.weight") for n in "qkv"], axis=0)
        qkv = g.linear(h, wqkv, p + "self_attn.qkv_proj.weight")
        del wqkv
        if arch["qkv_bias"]:
            bias = np.concatenate([weights(p + f"self_attn.{n}_proj.bias") for n in "qkv"]).astype(np.float32)
            qkv = g.op("Add", [qkv, g.init(p + "self_attn.qkv_proj.bias", bias)])[0]
        attn, _, _ = g.op(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len,
             cos_cache, sin_cache],
            [g.fresh("attn"), f"present.{i}.key", f"present.{i}.value"], domain="com.microsoft",
            num_heads=NH, kv_num_heads=KVH, scale=1.0 / math.sqrt(D), local_window_size=-1, do_rotary=1,
            rotary_interleaved=0)
        delta = g.linear(attn, weights(p + "self_attn.o_proj.weight"), p + "self_attn.o_proj.weight")
        h = norm(p + "post_attention_layernorm.weight")
        gate = g.linear(h, weights(p + "mlp.gate_proj.weight"), p + "mlp.gate_proj.weight")
        up = g.linear(h, weights(p + "mlp.up_proj.weight"), p + "mlp.up_proj.weight")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])[0]])[0], up])[0]
        delta = g.linear(act, weights(p + "mlp.down_proj.weight"), p + "mlp.down_proj.weight")
        if progress:
            progress(i + 1, cfg.num_hidden_layers)
    gamma = g.init("model.norm.weight", weights("model.norm.weight").astype(np.float32))
    final, _, _, _ = g.op("SkipSimplifiedLayerNormalization", [delta, residual, gamma],
                          [g.fresh("final"), "", "", ""], domain="com.microsoft", epsilon=eps)
    last = g.op("Slice", [final, g.const([-1]), g.const([np.iinfo(np.int64).max]), g.const([1])])[0]
    if hasattr(weights, "rows"):  # a lazy source: the head in chunks, never whole in fp32
        n, k = weights.shape("lm_head.weight")
        head = (n, k, lambda r0, r1: weights.rows("lm_head.weight", r0, r1))
    else:
        head = weights("lm_head.weight")
    logits = g.linear(last, head, "lm_head.weight", bits=None if quant == "fp32" else 8)
    g.graph.node.append(helper.make_node("Identity", [logits], ["logits"], name="logits_out"))

    g.graph.name = "decoder"
    g.graph.input.extend(inputs)
    g.graph.output.extend(outputs)
    model = g.model
    model.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.producer_name = "edgewise-modelprep"
    model.ir_version = 10
    return model


def count_params(cfg: Config, tied: bool) -> int:
    """Weights of the source model (what its size class means), not of the packed graph."""
    H, F, NH, KVH, D = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                        cfg.num_key_value_heads, cfg.head_dim)
    per_layer = H * (NH + 2 * KVH) * D + NH * D * H + 3 * H * F + 2 * H
    if ARCHITECTURES[cfg.model_type]["qkv_bias"]:
        per_layer += (NH + 2 * KVH) * D
    return cfg.vocab_size * H * (1 if tied else 2) + cfg.num_hidden_layers * per_layer + H
