"""The Python scoring rule (tools/modelprep/scoring.py) against the cases `edgewise eval`'s rule
(cli/src/eval/items.rs) is tested against too: eval/scoring-cases.jsonl. Run by `make test`."""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from modelprep import chat, scoring  # noqa: E402

CASES = os.path.join(HERE, "..", "eval", "scoring-cases.jsonl")


class Scoring(unittest.TestCase):
    def test_the_shared_cases(self):
        with open(CASES) as fh:
            cases = [json.loads(line) for line in fh if line.strip()]
        self.assertGreater(len(cases), 20)
        for c in cases:
            with self.subTest(case=c):
                if "reply" in c:
                    self.assertEqual(scoring.is_correct(c["item"], c["reply"]), c["correct"])
                if "message" in c:
                    self.assertEqual(scoring.message(c["item"]), c["message"])
                    self.assertEqual(scoring.max_tokens(c["item"]), c["max_tokens"])

    def test_the_committed_sets_are_scored_by_their_shape(self):
        for name, choice in (("mmlu-200.jsonl", True), ("exact-answers.jsonl", False)):
            with open(os.path.join(HERE, "..", "eval", name)) as fh:
                item = json.loads(fh.readline())
            self.assertEqual(scoring.is_choice(item), choice)
            self.assertTrue(scoring.is_correct(item, item["answer"]))


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
