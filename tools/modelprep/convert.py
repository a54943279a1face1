"""One GGUF file -> one ready model folder (model.onnx, tokenizer.json, model.toml), written into
a directory the caller renames into place. Used by `prepare_models.py` and `import_gguf.py`."""
from __future__ import annotations

import os
import resource
import sys
import time

import onnx

from . import fused_decoder, gguf_import, manifest

# ONNX's protobuf limit is 2 GiB; past 1 GB the weights go to one external data file beside
# model.onnx, which also spares serializing the whole graph into one buffer (peak memory)
EXTERNAL_DATA_ABOVE = 1_000_000_000
QUANT_LABEL = {"q4": "q4", "q8": "int8", "fp32": "fp32"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct == self.last or (not self.tty and pct % 25 and done != total):
            return
        self.last = pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        end = "\n" if done == total or not self.tty else ""
        sys.stderr.write(f"\r[models] {self.label} [{bar}] {pct:3d}% ({done}/{total} layers){end}")
        sys.stderr.flush()


def convert(gguf: str, folder: str, name: str, quant: str, quality: float, description: str,
            system: str | None = None, default_max_tokens: int = 256, max_context: int = 8192) -> dict:
    """Writes the folder's files; returns what was measured (time, peak memory, size)."""
    t0 = time.time()
    imp = gguf_import.load(gguf, max_context=max_context)
    cfg = imp.cfg
    model = fused_decoder.build(cfg, imp.weights, quant, progress=Progress(f"{name} ({quant})"))
    onnx_path = os.path.join(folder, "model.onnx")
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size > EXTERNAL_DATA_ABOVE:
        onnx.save(model, onnx_path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save(model, onnx_path)
    del model
    imp.tokenizer.save(os.path.join(folder, "tokenizer.json"))
    chat = imp.chat_template
    sections = {"generate": {"interface": fused_decoder.INTERFACE, "eos_token_ids": imp.eos_token_ids,
                             "add_bos": False, "default_max_tokens": min(default_max_tokens, cfg.max_position_embeddings)}}
    if chat:
        t = {"message": chat.message, "generation_prompt": chat.generation_prompt}
        if system or chat.default_system:
            t["default_system"] = system or chat.default_system
        if chat.tools:
            t["tools"] = chat.tools
        sections["generate.chat_template"] = t
    manifest.write(folder, {
        "name": name, "task": "generate", "parameters": fused_decoder.count_params(cfg, imp.tied),
        "quantization": QUANT_LABEL[quant], "quality": quality, "context_length": cfg.max_position_embeddings,
        "description": description,
    }, sections)
    files = [os.path.join(folder, f) for f in os.listdir(folder)]
    return {"seconds": time.time() - t0, "peak_rss_mb": peak_rss_mb(),
            "bytes": sum(os.path.getsize(f) for f in files if os.path.isfile(f)),
            "architecture": cfg.model_type, "layers": cfg.num_hidden_layers, "chat_template": chat is not None,
            "source_quant": imp.source_quant, "gguf_name": imp.name}


def assemble(parts: list[str], dest: str, sha256: str, size: int | None = None) -> str:
    """Joins byte slices in order into `dest` (through a .part file) and checks its hash."""
    import hashlib

    if os.path.exists(dest) and _sha256(dest) == sha256:
        return dest
    tmp = dest + ".part"
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as src:
                while block := src.read(1 << 22):
                    h.update(block)
                    out.write(block)
    got = h.hexdigest()
    if got != sha256 or (size is not None and os.path.getsize(tmp) != size):
        os.remove(tmp)
        raise SystemExit(f"{dest}: assembled sha256 {got} does not match the pinned {sha256}")
    os.replace(tmp, dest)
    return dest


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()

