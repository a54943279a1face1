"""The chat template rendering the quality script asks items through (tools/modelprep/chat.py),
as the agent renders it. Run by `make test`. (How an item is asked and scored is `edgewise
eval`'s alone: cli/src/eval/items.rs tests it against eval/scoring-cases.jsonl.)"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from modelprep import chat  # noqa: E402


class Chat(unittest.TestCase):
    def test_renders_as_the_agent_does(self):
        t = dict(chat.CHATML, default_system="Be brief.")
        self.assertEqual(
            chat.render(t, [("user", "Hi")]),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        # a system turn given replaces the default
        self.assertEqual(
            chat.render(t, [("system", "S"), ("user", "Hi")]),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        self.assertEqual(chat.render(None, [("user", "Hi")]), "Hi")
        with self.assertRaises(ValueError):
            chat.render(t, [("tool", "x")])

    def test_reads_the_template_from_model_toml(self):
        folder = os.path.join(HERE, "..", "tests", "fixtures", "models", "tiny-lm-q4")
        t = chat.template_of(folder)
        self.assertEqual(chat.render(t, [("user", "Hi")]), "<user>Hi\n<assistant>")


if __name__ == "__main__":
    unittest.main()
