#!/usr/bin/env python3
"""Measure each local generate model's quality and write it into its manifest.

    measure_quality.py --models-dir models --edgewise target/debug/edgewise [--model NAME ...] [--write]

quality = the mean of two accuracies, greedy and zero-shot through the model's own chat
template, on the committed sets in eval/ (README there names their sources). Each item is
asked and scored by `edgewise eval` itself, the one implementation of the rule (`edgewise eval
items` says how each item is asked, `edgewise eval score` whether a reply is right; tested
against eval/scoring-cases.jsonl in cli/src/eval/items.rs), so a manifest's quality and the
cascade's calibration agree on what "right" means:
- MMLU (`eval/mmlu-200.jsonl`, the first --mmlu items): asked for the letter alone under a
  choice constraint (here: the best-scoring of the options' tokens, each one token); right
  when it is the answer letter;
- exact answers (`eval/exact-answers.jsonl`, the first --exact items): 12 new tokens; right
  when the answer is the first line, or a whole word of it (case and a final period ignored).

It runs the model folder's graph in onnxruntime directly, driven as the agent drives it
(tools/modelprep/decode.py: the K/V buffer bound as past and present). With --write,
`quality` in model.toml is replaced and a comment above it records the measurement, so a
model's quality is never a guessed number. Runs in the project's virtualenv (build/venv).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from modelprep import chat  # noqa: E402
from modelprep.decode import Decoder  # noqa: E402


# Recorded in the manifest's comment: a quality measured by another rule is measured again.
RULE = "scored as edgewise eval scores, letters by choice constraint"


class Rule:
    """How `edgewise eval` asks an item and scores a reply (through its command line)."""

    def __init__(self, edgewise: str):
        self.edgewise = edgewise

    def _run(self, args: list[str], stdin: str = "") -> list[dict]:
        r = subprocess.run([self.edgewise, "eval", *args], input=stdin, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{self.edgewise} eval {' '.join(args)}: {r.stderr.strip()}")
        return [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]

    def asks(self, set_path: str, n: int) -> list[dict]:
        return self._run(["items", "--set", set_path])[:n]

    def right(self, set_path: str, replies: list[tuple[int, str]]) -> int:
        lines = "".join(json.dumps({"line": line, "reply": reply}) + "\n" for line, reply in replies)
        return sum(r["correct"] for r in self._run(["score", "--set", set_path], lines))


class Model:
    def __init__(self, folder: str, threads: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        with open(os.path.join(folder, "model.toml"), "rb") as fh:
            self.manifest = tomllib.load(fh)
        self.template = chat.template_of(folder)
        self.tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        self.decoder = Decoder(ort.InferenceSession(os.path.join(folder, "model.onnx"), o,
                                                    providers=["CPUExecutionProvider"]))
        self.eos = set(self.manifest["generate"]["eos_token_ids"])

    def reply(self, ask: dict) -> str:
        """The greedy reply to an item, asked as `edgewise eval items` says."""
        text = chat.render(self.template, [("user", ask["message"])])
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if ask["choice"]:
            # the choice constraint: the first token is one of the options' (each one token),
            # then the option is complete and only end-of-sequence is allowed
            options = [(o, self.tok.token_to_id(o)) for o in ask["choice"]]
            if any(t is None for _, t in options):
                raise SystemExit(f"{self.manifest['name']}: an option of {ask['choice']} is not one token")
            first, _ = self.decoder.greedy(ids, 0, self.eos)
            return max(options, key=lambda p: first[p[1]])[0]
        _, out = self.decoder.greedy(ids, ask["max_tokens"], self.eos)
        return self.tok.decode(out)


def measure(folder: str, rule: Rule, sets: dict[str, list[dict]], threads: int) -> dict:
    m = Model(folder, threads)
    t0 = time.time()
    acc = {}
    for path, asks in sets.items():
        acc[path] = rule.right(path, [(a["line"], m.reply(a)) for a in asks]) / len(asks)
    (mmlu_path, mmlu), (exact_path, exact) = sets.items()
    a, b = acc[mmlu_path], acc[exact_path]
    return {"model": m.manifest["name"], "mmlu": a, "mmlu_items": len(mmlu), "exact": b, "exact_items": len(exact),
            "quality": round((a + b) / 2, 3), "seconds": round(time.time() - t0, 1)}


def write(folder: str, r: dict, sets: str) -> None:
    path = os.path.join(folder, "model.toml")
    lines = [ln for ln in open(path).read().splitlines() if not ln.startswith("# quality: measured")]
    note = (f"# quality: measured by tools/measure_quality.py: (MMLU {r['mmlu']:.3f} on {r['mmlu_items']} + "
            f"exact answers {r['exact']:.3f} on {r['exact_items']}) / 2, {sets}, {RULE}")
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
    ap.add_argument("--edgewise", default=os.path.join(ROOT, "target", "debug", "edgewise"),
                    help="the edgewise command line (its `eval items` and `eval score` are the rule)")
    ap.add_argument("--write", action="store_true", help="write the measured quality into model.toml")
    ap.add_argument("--unmeasured", action="store_true",
                    help="only models whose manifest has no measurement by the current rule yet")
    a = ap.parse_args()
    rule = Rule(a.edgewise)
    names = a.model or sorted(
        d for d in os.listdir(a.models_dir)
        if os.path.isfile(os.path.join(a.models_dir, d, "model.toml"))
        and tomllib.load(open(os.path.join(a.models_dir, d, "model.toml"), "rb")).get("task") == "generate")
    for name in names:
        folder = os.path.join(a.models_dir, name)
        with open(os.path.join(folder, "model.toml")) as fh:
            if a.unmeasured and RULE in fh.read():
                continue
        sets = {os.path.join(ROOT, "eval/mmlu-200.jsonl"): a.mmlu, os.path.join(ROOT, "eval/exact-answers.jsonl"): a.exact}
        r = measure(folder, rule, {p: rule.asks(p, n) for p, n in sets.items()}, a.threads)
        print(json.dumps(r), flush=True)
        if a.write:
            write(folder, r, "eval/mmlu-200.jsonl, eval/exact-answers.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
