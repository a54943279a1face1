"""The agent's decode loop in onnxruntime, for the tools and the benchmarks' reference: a fused
decoder graph (fused_decoder.py) driven as the agent drives it — one K/V buffer per layer and
kind, bound as both `past_key_values.*` and `present.*` (IO binding), so new positions are
written in place."""
from __future__ import annotations

import numpy as np


class Decoder:
    def __init__(self, session):
        """`session`: an onnxruntime InferenceSession over a fused decoder graph."""
        import onnxruntime as ort

        self.ort = ort
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.past = sorted(n for n in inputs if n.startswith("past_key_values."))
        self.kv_heads, self.head_dim = inputs[self.past[0]].shape[1], inputs[self.past[0]].shape[3]

    def cache(self, rows: int, capacity: int, fill=None) -> dict:
        """K/V buffers for `rows` sequences of up to `capacity` positions: name → numpy array
        (zeros, or `fill(shape)`). The arrays own the memory the bindings point at."""
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        return {n: (np.zeros(shape, np.float32) if fill is None else fill(shape)) for n in self.past}

    def binding(self, cache: dict):
        """An IO binding with every buffer of `cache` bound as past and present, and the logits
        output (the first output copied back)."""
        b = self.session.io_binding()
        b.bind_output("logits")
        for n, arr in cache.items():
            v = self.ort.OrtValue.ortvalue_from_numpy(arr)
            b.bind_ortvalue_input(n, v)
            b.bind_ortvalue_output(n.replace("past_key_values.", "present."), v)
        b._edgewise_values = cache  # keep the arrays alive with the binding
        return b

    def step(self, binding, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Runs `ids` [rows, n] with `mask` [rows, past + n]; the logits [rows, n, vocab]."""
        binding.bind_cpu_input("input_ids", ids.astype(np.int64))
        binding.bind_cpu_input("attention_mask", mask.astype(np.int64))
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def greedy(self, ids: list[int], new_tokens: int, eos=()) -> tuple[np.ndarray, list[int]]:
        """One sequence: the prompt prefilled at once, then greedy steps; the first new token's
        logits and up to `new_tokens` tokens (stopping at an EOS, which is not returned)."""
        b = self.binding(self.cache(1, len(ids) + max(new_tokens, 1)))
        feed, total, out, first = ids, 0, [], None
        for _ in range(max(new_tokens, 1)):
            total += len(feed)
            logits = self.step(b, np.array([feed]), np.ones((1, total)))[0, -1]
            if first is None:
                first = logits
            t = int(logits.argmax())
            if new_tokens == 0 or t in eos:
                break
            out.append(t)
            feed = [t]
        return first, out
