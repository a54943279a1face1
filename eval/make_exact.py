#!/usr/bin/env python3
"""Writes eval/exact-answers.jsonl: short questions with one exact answer each (arithmetic,
capitals, unit conversions, dates), from a fixed seed, so the file is the same every run.

    python3 eval/make_exact.py
"""
import datetime
import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasilia", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Russia": "Moscow", "India": "New Delhi", "Mexico": "Mexico City", "Norway": "Oslo",
    "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Portugal": "Lisbon", "Turkey": "Ankara",
    "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago", "Ireland": "Dublin", "Austria": "Vienna",
    "Hungary": "Budapest", "Finland": "Helsinki", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Nigeria": "Abuja",
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def items(rng: random.Random):
    for _ in range(20):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        yield "add-1digit", f"What is {a} + {b}?", str(a + b)
    for _ in range(20):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        yield "add-2digit", f"What is {a} + {b}?", str(a + b)
    for _ in range(15):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        yield "multiply", f"What is {a} times {b}?", str(a * b)
    for country in rng.sample(sorted(CAPITALS), 25):
        yield "capital", f"What is the capital of {country}?", CAPITALS[country]
    for _ in range(10):
        km = rng.randint(2, 9)
        yield "units", f"How many meters are in {km} kilometers?", str(km * 1000)
    for _ in range(10):
        h = rng.randint(2, 9)
        yield "units", f"How many minutes are in {h} hours?", str(h * 60)
    for _ in range(10):
        d = datetime.date(2024, 1, 1) + datetime.timedelta(days=rng.randint(0, 364))
        yield "dates", f"Which month comes right after {MONTHS[d.month - 1]}?", MONTHS[d.month % 12]


def main():
    rng = random.Random(20261203)
    out = Path(__file__).with_name("exact-answers.jsonl")
    rows = list(items(rng))
    rng.shuffle(rows)  # any prefix is a mix of every kind
    with out.open("w") as fh:
        for kind, q, a in rows:
            fh.write(json.dumps({"kind": kind, "question": q + " Answer with only the answer.", "answer": a}) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
