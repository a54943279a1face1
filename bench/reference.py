"""The Python references `make bench` measures the agent against, on the same model files
and thread counts. Each subcommand prints one JSON object per line.

  embed     onnxruntime session on an embedder: tokenize, run, mean-pool, normalise
  generate    a greedy decode loop in onnxruntime over the same ONNX file the agent runs
  batch-step  the same graph's batched decode steps (rows sequences at once), no server
  llama       llama.cpp (llama-cpp-python) greedy on the original GGUF
  llama-batch llama.cpp decoding rows sequences in one batch per step (its batch API)
  weights   bytes of weights one decode step reads (the roofline's denominator)

Every prompt is the model folder's chat template (its model.toml) rendered as the agent
renders it, with the template's default system prompt (tools/modelprep/chat.py); the llama
subcommands take the folder with --template-from. The decode loop is the tools' own
(tools/modelprep/decode.py). Run with build/venv/bin/python (numpy, onnx, onnxruntime,
tokenizers); `llama` needs the venv that bench/llama.sh builds.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from modelprep import chat  # noqa: E402


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


def prompt_text(folder: Path, prompt: str) -> str:
    """The prompt as the agent renders a one-message chat for the model in `folder`."""
    return chat.render(chat.template_of(str(folder)), [("user", prompt)])


def fused_loop(model: Path, threads: int):
    """Greedy decoding over the agent's fused graph, laid out as the agent drives it (the tools'
    Decoder: one K/V buffer per layer bound as both past and present)."""
    import numpy as np
    from modelprep.decode import Decoder

    dec = Decoder(ort_session(model / "model.onnx", threads))

    def run(rows: list[list[int]], new_tokens: int, on_token=None):
        """Greedy-decodes every row (each prefilled alone, then batched steps); returns the
        time of the first batched step's start and the end."""
        cap = max(len(r) for r in rows) + new_tokens
        cache = dec.cache(len(rows), cap)
        lens, last = [], []
        for b, ids in enumerate(rows):
            # a row prefills into its own batch-1 buffer, copied in afterwards
            row = dec.cache(1, cap)
            logits = dec.step(dec.binding(row), np.array([ids]), np.ones((1, len(ids))))
            for n in dec.past:
                cache[n][b] = row[n][0]
            last.append(int(logits[0, -1].argmax()))
            lens.append(len(ids))
            if on_token:
                on_token(b)
        start = time.perf_counter()
        bind = dec.binding(cache)
        for _ in range(new_tokens - 1):
            mask = np.zeros((len(rows), max(lens) + 1))
            for b, n in enumerate(lens):
                mask[b, : n + 1] = 1
            logits = dec.step(bind, np.array(last)[:, None], mask)
            last = [int(x) for x in logits[:, -1].argmax(-1)]
            lens = [n + 1 for n in lens]
        return start, time.perf_counter()

    return run


def generate(a):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    run = fused_loop(a.model, a.threads)
    ids = tok.encode(prompt_text(a.model, a.prompt), add_special_tokens=False).ids

    def once():
        t0 = time.perf_counter()
        first, end = run([ids], a.new_tokens)
        return first - t0, (end - first) / max(1, a.new_tokens - 1)

    once()  # warm-up: first-run allocations
    runs = [once() for _ in range(a.runs)]
    print(json.dumps({"ref": "python-ort-greedy", "model": a.model.name, "prompt_tokens": len(ids),
                      "new_tokens": a.new_tokens,
                      "ttft_ms": statistics.median(r[0] for r in runs) * 1e3,
                      "tpot_ms": statistics.median(r[1] for r in runs) * 1e3}), flush=True)


def llama(a):
    from llama_cpp import Llama

    llm = Llama(model_path=str(a.gguf), n_threads=a.threads, n_threads_batch=a.threads,
                n_ctx=512, n_batch=512, seed=7, verbose=False)
    text = prompt_text(a.template_from, a.prompt)
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


def llama_batch(a):
    """llama.cpp decoding `rows` sequences in one batch per step (its low-level batch API):
    what llama.cpp's server does with parallel slots. Aggregate tokens per second."""
    import llama_cpp as lc
    import numpy as np
    from llama_cpp import Llama

    text = prompt_text(a.template_from, a.prompt)
    # the model once; a context per batch size with room for `rows` sequences
    llm = Llama(model_path=str(a.gguf), n_threads=a.threads, n_threads_batch=a.threads, n_ctx=512,
                verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    vocab = llm.n_vocab()
    for rows in a.rows:
        params = lc.llama_context_default_params()
        params.n_ctx = rows * 256 * -(-(len(ids) + a.new_tokens + 16) // 256)  # a multiple of rows
        params.n_batch = 512
        params.n_seq_max = rows
        params.n_threads = params.n_threads_batch = a.threads
        ctx = lc.llama_init_from_model(llm.model, params)
        batch = lc.llama_batch_init(max(len(ids), rows), 0, rows)

        def add(i, tok, pos, seq, logits):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits

        def argmax(i):
            return int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(vocab,)).argmax())

        def once():
            lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
            last = []
            for s in range(rows):  # each sequence's prompt, prefilled on its own
                batch.n_tokens = len(ids)
                for i, t in enumerate(ids):
                    add(i, t, i, s, i == len(ids) - 1)
                assert lc.llama_decode(ctx, batch) == 0
                last.append(argmax(len(ids) - 1))
            start = time.perf_counter()
            for step in range(a.new_tokens - 1):
                batch.n_tokens = rows
                for s in range(rows):
                    add(s, last[s], len(ids) + step, s, True)
                assert lc.llama_decode(ctx, batch) == 0
                last = [argmax(s) for s in range(rows)]
            return time.perf_counter() - start

        once()
        el = statistics.median(once() for _ in range(a.runs))
        print(json.dumps({"ref": "llama.cpp-batch", "model": a.gguf.name, "rows": rows,
                          "tokens_per_s": rows * (a.new_tokens - 1) / el}), flush=True)
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def batch_step(a):
    """The same fused graph's batched decode step in Python onnxruntime (no server)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    run = fused_loop(a.model, a.threads)
    ids = tok.encode(prompt_text(a.model, a.prompt), add_special_tokens=False).ids
    for rows in a.rows:
        run([ids] * rows, 8)
        els = []
        for _ in range(a.runs):
            first, end = run([ids] * rows, a.new_tokens)
            els.append(end - first)
        print(json.dumps({"ref": "python-ort-batch", "model": a.model.name, "rows": rows,
                          "tokens_per_s": rows * (a.new_tokens - 1) / statistics.median(els)}), flush=True)


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
    for name in ("generate", "llama", "llama-batch", "batch-step"):
        g = sub.add_parser(name)
        if name in ("generate", "batch-step"):
            g.add_argument("--model", type=Path, required=True)
        else:
            g.add_argument("--gguf", type=Path, required=True)
            g.add_argument("--template-from", type=Path, required=True,
                           help="the model folder whose chat template renders the prompt")
        if name in ("llama-batch", "batch-step"):
            g.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
        g.add_argument("--threads", type=int, default=2)
        g.add_argument("--prompt", required=True)
        g.add_argument("--new-tokens", type=int, default=64)
        g.add_argument("--runs", type=int, default=3)
    w = sub.add_parser("weights")
    w.add_argument("--model", type=Path, required=True)
    a = p.parse_args()
    {"embed": embed, "generate": generate, "llama": llama, "llama-batch": llama_batch, "batch-step": batch_step,
     "weights": weights}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
