#!/usr/bin/env python3
"""Writes tests/fixtures/qwen2-tokenizer-parity.json: token ids that llama.cpp's own tokenizer
gives for a fixed set of strings on the Qwen2.5 GGUF. The real-model test checks that the
tokenizer.json rebuilt from the same GGUF (tools/modelprep/gguf_import.py) gives the same ids.

    build/bench/llama-venv/bin/python tools/qwen_tokenizer_parity.py build/downloads/work/qwen2.5-coder-0.5b-q4.gguf

(llama-cpp-python is the benchmark's venv, bench/llama/setup.sh.)
"""
import json
import sys

from llama_cpp import Llama

STRINGS = [
    "What is the capital of France?",
    "Hello, world! It's 2026-12-03; prices rose 12.5% (from $1,234.56).",
    "东京是日本的首都。北京是中国的首都。",
    "日本語のテキストと한국어 텍스트",
    "Emoji: 🚀🔥👍🏽 and a family 👨‍👩‍👧",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tprintln!(\"{}\", 42);\n}",
    "spaces    and\ttabs\t\tand\n\n\nnewlines   \n  ",
    "   leading and trailing   ",
    "Ünïcödé café naïve résumé — “quotes” ‘single’ …",
    "I'm we'll they've she'd DON'T",
    "1234567890 3.14159 1e-10 0xFF",
]

llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
ids = [llm.tokenize(s.encode(), add_bos=False, special=False) for s in STRINGS]
out = {"source": "llama.cpp (llama-cpp-python 0.3.36) tokenizing with the GGUF's vocabulary",
       "gguf_sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
       "cases": [{"text": s, "ids": i} for s, i in zip(STRINGS, ids)]}
with open("tests/fixtures/qwen2-tokenizer-parity.json", "w") as fh:
    json.dump(out, fh, ensure_ascii=False, indent=1)
print(f"{len(STRINGS)} strings written")
