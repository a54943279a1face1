#!/usr/bin/env python3
"""Measure each local generate model's quality and write it into its manifest.

    measure_quality.py --models-dir models [--model NAME ...] [--write]

quality = the mean of two accuracies, both greedy and zero-shot through the model's own chat
template, on the committed sets in eval/ (README there names their sources):
- MMLU (`eval/mmlu-200.jsonl`, the first --mmlu items): the letter A-D whose token the model
  rates highest as its first answer token;
- exact answers (`eval/exact-answers.jsonl`, the first --exact items): up to 12 new tokens; right
  when the answer is the first line, or a whole word of it (case and a final period ignored).

It runs the model folder's graph in onnxruntime directly, driven as the agent drives it (the
K/V buffer bound as past and present). With --write, `quality` in model.toml is replaced and a
comment above it records the measurement, so a model's quality is never a guessed number.
Runs in the project's virtualenv (build/venv).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import tomllib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Model:
    def __init__(self, folder: str, threads: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.manifest = tomllib.load(open(os.path.join(folder, "model.toml"), "rb"))
        self.tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), o, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.sess.get_inputs()}
        self.past = sorted(n for n in inputs if n.startswith("past_key_values."))
        self.kvh, self.hd = inputs[self.past[0]].shape[1], inputs[self.past[0]].shape[3]
        self.eos = set(self.manifest["generate"]["eos_token_ids"])
        self.ort = ort

    def chat(self, user: str) -> list[int]:
        t = self.manifest["generate"].get("chat_template")
        if not t:
            text = user
        else:
            text = ""
            if t.get("default_system"):
                text += t["message"].replace("{role}", "system").replace("{content}", t["default_system"])
            text += t["message"].replace("{role}", "user").replace("{content}", user) + t["generation_prompt"]
        return self.tok.encode(text, add_special_tokens=False).ids

    def run(self, ids: list[int], new_tokens: int) -> tuple[np.ndarray, list[int]]:
        """First-token logits and the greedy continuation (stops at EOS)."""
        ort = self.ort
        cap = len(ids) + new_tokens + 1
        arrays = {n: np.zeros((1, self.kvh, cap, self.hd), np.float32) for n in self.past}
        kv = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}
        out, first, feed, total = [], None, ids, 0
        for _ in range(max(new_tokens, 1)):
            b = self.sess.io_binding()
            b.bind_output("logits")
            total += len(feed)
            b.bind_cpu_input("input_ids", np.array([feed], np.int64))
            b.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
            for n, v in kv.items():
                b.bind_ortvalue_input(n, v)
                b.bind_ortvalue_output(n.replace("past_key_values.", "present."), v)
            self.sess.run_with_iobinding(b)
            logits = b.copy_outputs_to_cpu()[0][0, -1]
            if first is None:
                first = logits
            t = int(logits.argmax())
            if t in self.eos or new_tokens == 0:
                break
            out.append(t)
            feed = [t]
        return first, out


def letter_ids(m: Model) -> list[int]:
    ids = []
    for letter in "ABCD":
        enc = m.tok.encode(letter, add_special_tokens=False).ids
        ids.append(enc[0])
    return ids


def correct(response: str, answer: str) -> bool:
    line = response.strip().split("\n")[0].strip().lower().rstrip(".")
    a = answer.lower()
    return line == a or re.search(rf"(?<![\w.]){re.escape(a)}(?![\w])", line) is not None


def measure(folder: str, mmlu: list[dict], exact: list[dict], threads: int) -> dict:
    m = Model(folder, threads)
    t0 = time.time()
    letters = letter_ids(m)
    right_mmlu = 0
    for item in mmlu:
        logits, _ = m.run(m.chat(item["prompt"]), 0)
        right_mmlu += "ABCD"[int(np.argmax(logits[letters]))] == item["answer"]
    right_exact = 0
    for item in exact:
        _, out = m.run(m.chat(item["question"]), 12)
        right_exact += correct(m.tok.decode(out), item["answer"])
    a, b = right_mmlu / len(mmlu), right_exact / len(exact)
    return {"model": m.manifest["name"], "mmlu": a, "mmlu_items": len(mmlu), "exact": b, "exact_items": len(exact),
            "quality": round((a + b) / 2, 3), "seconds": round(time.time() - t0, 1)}


def write(folder: str, r: dict, sets: str) -> None:
    path = os.path.join(folder, "model.toml")
    lines = [ln for ln in open(path).read().splitlines() if not ln.startswith("# quality: measured")]
    note = (f"# quality: measured by tools/measure_quality.py: (MMLU {r['mmlu']:.3f} on {r['mmlu_items']} + "
            f"exact answers {r['exact']:.3f} on {r['exact_items']}) / 2, {sets}")
    out = []
    for ln in lines:
        if ln.startswith("quality = "):
            out += [note, f"quality = {r['quality']}"]
        else:
            out.append(ln)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(out) + "\n")
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--model", action="append", help="folder name (default: every generate model)")
    ap.add_argument("--mmlu", type=int, default=60, help="MMLU items (the first N of 200)")
    ap.add_argument("--exact", type=int, default=60, help="exact-answer items (the first N of 110)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="write the measured quality into model.toml")
    ap.add_argument("--unmeasured", action="store_true", help="only models whose manifest has no measurement yet")
    a = ap.parse_args()
    mmlu = [json.loads(ln) for ln in open(os.path.join(ROOT, "eval/mmlu-200.jsonl"))][: a.mmlu]
    exact = [json.loads(ln) for ln in open(os.path.join(ROOT, "eval/exact-answers.jsonl"))][: a.exact]
    names = a.model or sorted(
        d for d in os.listdir(a.models_dir)
        if os.path.isfile(os.path.join(a.models_dir, d, "model.toml"))
        and tomllib.load(open(os.path.join(a.models_dir, d, "model.toml"), "rb")).get("task") == "generate")
    for name in names:
        folder = os.path.join(a.models_dir, name)
        if a.unmeasured and "# quality: measured" in open(os.path.join(folder, "model.toml")).read():
            continue
        r = measure(folder, mmlu, exact, a.threads)
        print(json.dumps(r), flush=True)
        if a.write:
            write(folder, r, "eval/mmlu-200.jsonl, eval/exact-answers.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
