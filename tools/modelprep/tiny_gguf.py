"""Tiny GGUF files for tests: a random-weight qwen2 model (F32 tensors, byte-level BPE with two
merges, ChatML template) in llama.cpp's layout, and a file that names an unsupported
architecture. Seeded: the same bytes every run."""
from __future__ import annotations

import numpy as np

from . import llama_onnx
from .gguf_import import HF_TO_GGUF
from .fused_decoder import Config

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tiny_qwen2_config() -> Config:
    vocab = 256 + len(MERGES) + len(SPECIALS)
    return Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, rope_theta=1e6, rms_norm_eps=1e-6,
                  max_position_embeddings=512, bos_token_id=256 + len(MERGES), eos_token_id=vocab - 1,
                  pad_token_id=256 + len(MERGES), model_type="qwen2")


def _vocab() -> tuple[list[str], list[int]]:
    b2u = llama_onnx._bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + SPECIALS
    types = [1] * (256 + len(MERGES)) + [3] * len(SPECIALS)  # 1 = NORMAL, 3 = CONTROL
    return tokens, types


def write_qwen2(path: str, seed: int = 1) -> tuple[Config, dict[str, np.ndarray]]:
    """The GGUF, and the HF-style weights it holds (for comparing an import with them)."""
    from gguf import GGUFWriter

    cfg = tiny_qwen2_config()
    w = llama_onnx.random_weights(cfg, seed=seed)
    gw = GGUFWriter(path, "qwen2")
    gw.add_name("tiny-qwen2 (random weights, Edgewise test fixture)")
    gw.add_block_count(cfg.num_hidden_layers)
    gw.add_context_length(cfg.max_position_embeddings)
    gw.add_embedding_length(cfg.hidden_size)
    gw.add_feed_forward_length(cfg.intermediate_size)
    gw.add_head_count(cfg.num_attention_heads)
    gw.add_head_count_kv(cfg.num_key_value_heads)
    gw.add_rope_freq_base(cfg.rope_theta)
    gw.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tokens, types = _vocab()
    gw.add_tokenizer_model("gpt2")
    gw.add_tokenizer_pre("qwen2")
    gw.add_token_list(tokens)
    gw.add_token_types(types)
    gw.add_token_merges(MERGES)
    gw.add_bos_token_id(cfg.bos_token_id)
    gw.add_eos_token_id(cfg.eos_token_id)
    gw.add_chat_template(CHATML)
    gw.add_tensor("token_embd.weight", w["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, gg in HF_TO_GGUF.items():
            gw.add_tensor(f"blk.{i}.{gg}", w[f"model.layers.{i}.{hf}"])
    gw.add_tensor("output_norm.weight", w["model.norm.weight"])
    gw.add_tensor("output.weight", w["lm_head.weight"])
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    return cfg, w


def write_unsupported(path: str, arch: str = "gemma3") -> None:
    """Metadata of another architecture and one tensor: enough for an importer to refuse it."""
    from gguf import GGUFWriter

    gw = GGUFWriter(path, arch)
    gw.add_block_count(1)
    gw.add_embedding_length(8)
    gw.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
