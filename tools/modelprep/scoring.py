"""How an evaluation item is asked and scored — the same rule as `edgewise eval`
(cli/src/eval/items.rs); eval/scoring-cases.jsonl holds the cases both are tested against.

- short exact answers `{"kind", "question", "answer"}`: the question is sent as is, 12 new
  tokens; right when the answer is the reply's first line or a whole word of it (case and a
  final period ignored; a several-word answer anywhere in that line);
- multiple choice (MMLU) `{"prompt", "answer": "A".."D", ...}`: the prompt without its
  trailing `Answer:` cue and with an instruction to answer with the letter alone, asked
  with a choice constraint (the reply is one of LETTERS: `edgewise eval` sends the agent a
  `choice`, measure_quality.py takes the best-scoring letter token, which is the same thing
  when each letter is one token); right when it is the answer letter.
Standard library only."""
from __future__ import annotations

LETTER_INSTRUCTION = "Answer with only the letter (A, B, C or D) of the correct option."
LETTERS = ("A", "B", "C", "D")


def is_choice(item: dict) -> bool:
    return "prompt" in item


def message(item: dict) -> str:
    """The user message sent for an item."""
    if not is_choice(item):
        return item["question"]
    # as Rust's trim_end().trim_end_matches("Answer:").trim_end()
    prompt = item["prompt"].rstrip()
    while prompt.endswith("Answer:"):
        prompt = prompt[: -len("Answer:")]
    return f"{prompt.rstrip()}\n{LETTER_INSTRUCTION}"


def max_tokens(item: dict) -> int:
    return 2 if is_choice(item) else 12


def letter(reply: str) -> str | None:
    """The answer letter a reply starts with (`B`, ` B.`, `B)`), if any."""
    t = reply.lstrip()
    if not t or t[0] not in "ABCDabcd":
        return None
    return t[0] if len(t) == 1 or not t[1].isalnum() else None


def exact(reply: str, answer: str) -> bool:
    def norm(s: str) -> str:
        return s.strip().rstrip(".").strip().lower()

    want = norm(answer)
    first = norm(reply.strip().split("\n")[0])
    words = "".join(c if (c.isalnum() or c == "-") else " " for c in first).split(" ")
    return first == want or want in words or (" " in want and want in first)


def is_correct(item: dict, reply: str) -> bool:
    if is_choice(item):
        got = letter(reply)
        return got is not None and got.upper() == item["answer"].upper()
    return exact(reply, item["answer"])
