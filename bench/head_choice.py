#!/usr/bin/env python3
"""The lm_head encoding choice, measured: the 4-bit SmolLM2 graph with its 8-bit MatMulNBits head
(what the project ships) against a per-tensor int8 MatMulInteger head, and fp32: perplexity on a
fixed passage (the README's first 256 tokens) and batched decode steps at 1 and 8 rows.

    build/venv/bin/python bench/head_choice.py GGUF   (bench/run.sh batching runs it)
"""

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")
)
from modelprep import gguf_import, fused_decoder as fd
from modelprep.decode import Decoder
from onnx import TensorProto

imp = gguf_import.load(sys.argv[1], max_context=2048)
cfg = imp.cfg
orig = fd._Graph.linear


def head_int8(self, x, w, name, bits=None):
    # y = (x_q @ W_q) * x_scale * W_scale: one activation scale for the whole batch
    if name != "lm_head.weight":
        return orig(self, x, w, name, bits)
    n, k, rows = w if isinstance(w, tuple) else (*w.shape, lambda a, b: w[a:b])
    W = rows(0, n).T.astype(np.float32)  # [k, n]
    s = np.abs(W).max() / 127.0
    q = np.clip(np.round(W / s), -127, 127).astype(np.int8)
    xq, xs, xz = self.op("DynamicQuantizeLinear", [x], 3)
    y = self.op(
        "MatMulInteger",
        [
            xq,
            self.init(name + ".i8", q),
            xz,
            self.init(name + ".zp", np.array(0, np.int8)),
        ],
    )[0]
    yf = self.op("Cast", [y], to=TensorProto.FLOAT)[0]
    return self.op("Mul", [yf, self.op("Mul", [xs, self.const(s, np.float32)])[0]])[0]


variants = {}
variants["q4, 8-bit MatMulNBits head (shipped)"] = fd.build(cfg, imp.weights, "q4")
fd._Graph.linear = head_int8
variants["q4, per-tensor int8 MatMulInteger head"] = fd.build(cfg, imp.weights, "q4")
fd._Graph.linear = orig
variants["fp32"] = fd.build(cfg, imp.weights, "fp32")
text = open(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
).read()[:1500]
ids = imp.tokenizer.encode(text, add_special_tokens=False).ids[:256]
so = ort.SessionOptions()
so.intra_op_num_threads = 2


def session(m):
    return ort.InferenceSession(
        m.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def ppl(s):
    dec = Decoder(s)
    b = dec.binding(dec.cache(1, len(ids) + 1))
    nll = 0.0
    for t in range(len(ids) - 1):
        ln = dec.step(b, np.array([[ids[t]]]), np.ones((1, t + 1)))[0, -1].astype(np.float64)
        m = ln.max()
        nll -= ln[ids[t + 1]] - m - np.log(np.exp(ln - m).sum())
    return float(np.exp(nll / (len(ids) - 1)))


def step_rate(s, rows, steps=48, past=100):
    dec = Decoder(s)
    rng = np.random.default_rng(0)
    cache = dec.cache(rows, past + steps + 1,
                      fill=lambda shape: rng.standard_normal(shape).astype(np.float32) * 0.1)
    b = dec.binding(cache)
    best = 0
    for rep in range(3):
        t0 = time.perf_counter()
        for st in range(steps):
            dec.step(b, np.full((rows, 1), 300), np.ones((rows, past + st + 1)))
        best = max(best, rows * steps / (time.perf_counter() - t0))
    return best


for name, m in variants.items():
    s = session(m)
    print(
        json.dumps(
            {
                "bench": "lm-head",
                "variant": name,
                "perplexity": ppl(s),
                "tokens": len(ids),
                "tokens_per_s_1": step_rate(s, 1),
                "tokens_per_s_8": step_rate(s, 8),
            }
        ),
        flush=True,
    )
