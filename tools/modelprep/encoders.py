"""Encoder graphs: classifier heads on a sentence embedder, and tiny test encoders.

A classifier here is an embedder graph (output `last_hidden_state` [b, s, h]) extended with
mask-weighted mean pooling, L2 normalisation and a cosine-similarity head against fixed
centroids, scaled into `logits` [b, labels]. The agent applies softmax, so with scale k the
probabilities are softmax(k * cos). For the two-label easy/hard head with k = 10 the
probability of "hard" is exactly sigmoid(10 * (cos_hard - cos_easy)).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def add_cosine_head(model: onnx.ModelProto, centroids: np.ndarray, scale: float,
                    hidden_output: str = "last_hidden_state") -> onnx.ModelProto:
    """Append pooling + cosine head; the graph's only output becomes `logits` [b, n]."""
    if _opset(model) < 13:
        raise SystemExit("classifier head needs an embedder graph with opset >= 13")
    c = centroids.astype(np.float32)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    g = model.graph
    nodes = []

    def const(name: str, arr: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(kind: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], name="head_" + out, **attrs))
        return out

    ax1 = const("head_axis1", np.array([1], np.int64))
    axm1 = const("head_axis_last", np.array([-1], np.int64))
    mask = op("Unsqueeze", [op("Cast", ["attention_mask"], "head_maskf", to=TensorProto.FLOAT), axm1], "head_mask3")
    summed = op("ReduceSum", [op("Mul", [hidden_output, mask], "head_masked"), ax1], "head_sum", keepdims=0)
    count = op("Max", [op("ReduceSum", [mask, ax1], "head_count_raw", keepdims=0),
                      const("head_eps_count", np.array(1e-9, np.float32))], "head_count")
    mean = op("Div", [summed, count], "head_mean")
    norm = op("Sqrt", [op("ReduceSum", [op("Mul", [mean, mean], "head_sq"), axm1], "head_sumsq", keepdims=1)], "head_norm")
    unit = op("Div", [mean, op("Max", [norm, const("head_eps_norm", np.array(1e-12, np.float32))], "head_norm_safe")], "head_unit")
    cos = op("MatMul", [unit, const("head_centroids_t", np.ascontiguousarray(c.T))], "head_cos")
    op("Mul", [cos, const("head_scale", np.array(scale, np.float32))], "logits")
    g.node.extend(nodes)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", c.shape[0]]))
    return model


# --------------------------------------------------------------------------- tiny test encoders

TINY_WORDS = ["the", "a", "is", "of", "what", "capital", "france", "paris", "hello", "world", "edge",
              "model", "fast", "slow", "cat", "dog", "red", "blue", "lock", "free", "hash", "map"]


def tiny_wordpiece_tokenizer():
    """A BERT-style WordPiece tokenizer with a small vocabulary (words, letters, digits)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab_list = specials + TINY_WORDS + chars + ["##" + ch for ch in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    return tok, len(vocab)


def tiny_encoder(vocab_size: int, hidden: int = 32, max_pos: int = 64, seed: int = 7) -> onnx.ModelProto:
    """One masked self-attention layer: padding-exact, so a padded batch equals single runs in fp32.

    inputs input_ids, attention_mask, token_type_ids (int64 [b, s]) -> last_hidden_state [b, s, h].
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits, nodes = [], []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(kind: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def lin(i: int, o: int) -> np.ndarray:
        return (rng.standard_normal((i, o)) / math.sqrt(i)).astype(f32)

    emb = init("word_embeddings", rng.standard_normal((vocab_size, hidden)).astype(f32))
    pos_tab = init("position_embeddings", (0.1 * rng.standard_normal((max_pos, hidden))).astype(f32))
    typ_tab = init("token_type_embeddings", (0.1 * rng.standard_normal((2, hidden))).astype(f32))
    # positions 0..n-1 of each row's real tokens (right padding): cumsum(mask) - 1, floored at 0
    ones = op("CumSum", ["attention_mask", init("one", np.array(1, np.int64))], "mask_cumsum")
    positions = op("Max", [op("Sub", [ones, "one"], "pos_raw"), init("zero", np.array(0, np.int64))], "positions")
    x = op("Add", [op("Add", [op("Gather", [emb, "input_ids"], "tok_e", axis=0),
                              op("Gather", [pos_tab, positions], "pos_e", axis=0)], "x0"),
                   op("Gather", [typ_tab, "token_type_ids"], "typ_e", axis=0)], "x")
    q = op("MatMul", [x, init("wq", lin(hidden, hidden))], "q")
    k = op("MatMul", [x, init("wk", lin(hidden, hidden))], "k")
    v = op("MatMul", [x, init("wv", lin(hidden, hidden))], "v")
    scores = op("Mul", [op("MatMul", [q, op("Transpose", [k], "kt", perm=[0, 2, 1])], "qk"),
                        init("scale", np.array(1.0 / math.sqrt(hidden), f32))], "scores")
    keep = op("Unsqueeze", [op("Cast", ["attention_mask"], "mask_b", to=TensorProto.BOOL),
                            init("ax1", np.array([1], np.int64))], "mask_keys")  # [b, 1, s]
    bias = op("Where", [keep, init("fzero", np.array(0.0, f32)), init("fmin", np.array(-1e9, f32))], "bias")
    attn = op("Softmax", [op("Add", [scores, bias], "scores_m")], "attn", axis=-1)
    ctx = op("MatMul", [op("MatMul", [attn, v], "ctx0"), init("wo", lin(hidden, hidden))], "ctx")
    op("Tanh", [op("Add", [x, ctx], "res")], "last_hidden_state")
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", hidden])]
    graph = helper.make_graph(nodes, "tiny_encoder", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgewise-modelprep")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model
