#!/usr/bin/env python3
"""Turn a llama or qwen2 GGUF file into a model folder the agent serves.

    import_gguf.py FILE.gguf --models-dir DIR [--name NAME] [--quant q4|q8|fp32] [--quality Q]

Run by `edgewise-agent models import` in the project's virtualenv (build/venv). The folder is
built in a temporary sibling and renamed into place only when complete: a refused or failed
import leaves nothing behind. Exit status: 0 imported, 2 refused (the message says why), 1
failed otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modelprep import convert, gguf_import  # noqa: E402


def default_name(path: str, quant: str) -> str:
    stem = os.path.basename(path)
    stem = re.sub(r"\.gguf$", "", stem, flags=re.I).lower()
    stem = re.sub(r"[^a-z0-9.]+", "-", stem).strip("-")
    return f"{stem}-{quant}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--name")
    ap.add_argument("--quant", choices=("q4", "q8", "fp32"), default="q4")
    ap.add_argument("--quality", type=float, default=0.0,
                    help="manifest quality until measured (tools/measure_quality.py writes the measured one)")
    ap.add_argument("--context", type=int, default=8192, help="most positions a request may use")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args()
    name = a.name or default_name(a.gguf, a.quant)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        print(f"import: model name {name!r} must be lower-case letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    target = os.path.join(a.models_dir, name)
    if os.path.exists(target):
        print(f"import: {target} already exists (choose another --name, or remove it first)", file=sys.stderr)
        return 2
    os.makedirs(a.models_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".import-{name}-", dir=a.models_dir)
    try:
        stats = convert.convert(a.gguf, tmp, name, a.quant, a.quality,
                                description=f"imported from {os.path.basename(a.gguf)} by edgewise-agent models import",
                                max_context=a.context)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the agent may run as another user
        os.rename(tmp, target)
    except gguf_import.ImportRefused as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"import: {e}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stats.update({"name": name, "folder": target, "quantization": a.quant})
    if a.json:
        print(json.dumps(stats))
    else:
        print(f"imported {a.gguf} as {target}: {stats['architecture']}, {stats['layers']} layers, {a.quant}, "
              f"{stats['bytes'] / 1e6:.0f} MB, {stats['seconds']:.1f}s, peak memory {stats['peak_rss_mb']:.0f} MB"
              + ("" if stats["chat_template"] else " (no ChatML template found: prompts only)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
