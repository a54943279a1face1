"""The Python references `make bench` measures the agent against, on the same model files
and thread counts. Each subcommand prints one JSON object per line.

  embed     onnxruntime session on an embedder: tokenize, run, mean-pool, normalise
  generate  a greedy decode loop in onnxruntime over the same ONNX file the agent runs
  llama     llama.cpp (llama-cpp-python) greedy on the original GGUF
  weights   bytes of weights one decode step reads (the roofline's denominator)

Run with build/venv/bin/python (numpy, onnx, onnxruntime, tokenizers); `llama` needs the
venv that bench/llama.sh builds.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def ort_session(model: Path, threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])


def embed(a):
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    tok.enable_truncation(256)
    sess = ort_session(a.model / "model.onnx", a.threads)
    names = {i.name for i in sess.get_inputs()}

    def run(texts):
        enc = tok.encode_batch(texts)
        n = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), n), dtype=np.int64)
        mask = np.zeros((len(enc), n), dtype=np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = sess.run(["last_hidden_state"], feed)[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True), n

    for text in a.text:
        for _ in range(a.warmup):
            run([text])
        times = []
        for _ in range(a.iters):
            t = time.perf_counter()
            _, n = run([text])
            times.append((time.perf_counter() - t) * 1e3)
        print(json.dumps({"ref": "python-ort", "tokens": n, "p50_ms": statistics.median(times),
                          "mean_ms": statistics.fmean(times), "iters": a.iters}), flush=True)
    # Throughput of the same embedder when Python batches everything it has at once
    # (what a batch job would do): texts per second at batch 16 of the first text.
    batch = [a.text[0]] * 16
    run(batch)
    t = time.perf_counter()
    reps = max(1, a.iters // 8)
    for _ in range(reps):
        run(batch)
    el = time.perf_counter() - t
    print(json.dumps({"ref": "python-ort-batch16", "texts_per_s": 16 * reps / el}), flush=True)


def chatml(system: str, prompt: str) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")


def generate(a):
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    sess = ort_session(a.model / "model.onnx", a.threads)
    inputs = {i.name: i for i in sess.get_inputs()}
    past = sorted(n for n in inputs if n.startswith("past_key_values."))
    kv_heads, head_dim = inputs[past[0]].shape[1], inputs[past[0]].shape[3]
    outputs = ["logits"] + [n.replace("past_key_values.", "present.") for n in past]
    text = chatml(a.system, a.prompt)

    def once():
        start = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        cache = {n: np.zeros((1, kv_heads, 0, head_dim), dtype=np.float32) for n in past}
        step = np.array([ids], dtype=np.int64)
        pos = 0
        ttft, out = None, []
        while len(out) < a.new_tokens:
            n = step.shape[1]
            feed = {"input_ids": step,
                    "attention_mask": np.ones((1, pos + n), dtype=np.int64),
                    "position_ids": np.arange(pos, pos + n, dtype=np.int64)[None, :]}
            feed.update(cache)
            res = sess.run(outputs, feed)
            nxt = int(res[0][0, -1].argmax())
            out.append(nxt)
            if ttft is None:
                ttft = time.perf_counter() - start
            for name, value in zip(past, res[1:]):
                cache[name] = value
            pos += n
            step = np.array([[nxt]], dtype=np.int64)
        total = time.perf_counter() - start
        return len(ids), ttft, (total - ttft) / max(1, len(out) - 1)

    once()  # warm-up: first-run allocations
    runs = [once() for _ in range(a.runs)]
    print(json.dumps({"ref": "python-ort-greedy", "model": a.model.name, "prompt_tokens": runs[0][0],
                      "new_tokens": a.new_tokens,
                      "ttft_ms": statistics.median(r[1] for r in runs) * 1e3,
                      "tpot_ms": statistics.median(r[2] for r in runs) * 1e3}), flush=True)


def llama(a):
    from llama_cpp import Llama

    llm = Llama(model_path=str(a.gguf), n_threads=a.threads, n_threads_batch=a.threads,
                n_ctx=512, n_batch=512, seed=7, verbose=False)
    text = chatml(a.system, a.prompt)
    prompt_tokens = len(llm.tokenize(text.encode(), add_bos=False, special=True))
    eos = llm.token_eos()

    def once():
        llm.reset()
        start = time.perf_counter()
        ttft = None
        # EOS is suppressed so every engine decodes the same number of tokens (max_tokens);
        # the stream's chunks are text pieces, not tokens, so tokens are not counted from them.
        for chunk in llm.create_completion(text, max_tokens=a.new_tokens, temperature=0.0,
                                           top_k=1, logit_bias={eos: -1e9}, stream=True):
            if ttft is None and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - start
        total = time.perf_counter() - start
        return ttft, (total - ttft) / max(1, a.new_tokens - 1), a.new_tokens

    once()
    runs = [once() for _ in range(a.runs)]
    print(json.dumps({"ref": "llama.cpp", "model": a.gguf.name, "prompt_tokens": prompt_tokens,
                      "new_tokens": runs[0][2],
                      "ttft_ms": statistics.median(r[0] for r in runs) * 1e3,
                      "tpot_ms": statistics.median(r[1] for r in runs) * 1e3}), flush=True)


def weights(a):
    """Bytes one decode step reads: every initializer, except that a table consumed only by
    gathers (token embeddings, rotary tables) contributes one row per token."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(a.model / "model.onnx"))
    consumers = {}
    for node in m.graph.node:
        for i in node.input:
            consumers.setdefault(i, set()).add(node.op_type)
    total = 0
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        size = arr.nbytes
        if init.data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.INT4):
            size //= 2  # numpy unpacks 4-bit values to one byte each
        gathered = consumers.get(init.name, set()) <= {"Gather", "GatherBlockQuantized"}
        if gathered and arr.ndim >= 2 and arr.shape[0] > 1000:
            size //= arr.shape[0]
        total += size
    print(json.dumps({"ref": "weights", "model": a.model.name, "bytes_per_token": int(total)}), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--text", action="append", required=True)
    e.add_argument("--iters", type=int, default=200)
    e.add_argument("--warmup", type=int, default=20)
    for name in ("generate", "llama"):
        g = sub.add_parser(name)
        if name == "generate":
            g.add_argument("--model", type=Path, required=True)
        else:
            g.add_argument("--gguf", type=Path, required=True)
        g.add_argument("--threads", type=int, default=2)
        g.add_argument("--system", required=True)
        g.add_argument("--prompt", required=True)
        g.add_argument("--new-tokens", type=int, default=64)
        g.add_argument("--runs", type=int, default=3)
    w = sub.add_parser("weights")
    w.add_argument("--model", type=Path, required=True)
    a = p.parse_args()
    {"embed": embed, "generate": generate, "llama": llama, "weights": weights}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
