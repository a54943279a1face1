#!/usr/bin/env python3
"""Writes the labelled data-class set: dev.jsonl and held-out.jsonl, each line
{"text": ..., "types": [category, ...]} where types are the categories of the structured
identifiers and secrets the text holds (the gateway's categories: email, phone,
payment_card, iban, national_id, secret). Names, addresses, dates and the like are filled in
too but are not labelled: the detectors do not look for them, and must not fire on them.

Sources (fixed seed 20261204):
- the 209 sentence templates of presidio-evaluator 0.3.2 (Microsoft, MIT licence;
  presidio_evaluator/data_generator/raw_data/templates.txt), filled by Faker 40.63.0 (MIT);
- this project's own templates for US SSNs, secrets in code, config, JSON, YAML and prose, and
  hard negatives (UUIDs, git hashes, versions, timestamps, order numbers, placeholders).
Templates are split by parity of their index, so held-out sentences are ones dev never saw.

    pip download --no-deps presidio-evaluator==0.3.2 -d build/downloads
    pip install faker==40.63.0
    python eval/dataclass/make_set.py build/downloads/presidio_evaluator-0.3.2-py3-none-any.whl
"""
import json
import random
import re
import string
import sys
import uuid
import zipfile
from pathlib import Path

from faker import Faker

SEED = 20261204
HERE = Path(__file__).resolve().parent

LABELLED = {"credit_card_number": "payment_card", "phone_number": "phone", "email": "email",
            "iban": "iban", "ssn": "national_id"}

OWN_PII = [
    "My social security number is {{ssn}}, please update my file.",
    "SSN: {{ssn}} — verified by phone.",
    "Employee {{name}} (SSN {{ssn}}) starts on Monday.",
    "Can you check whether {{ssn}} is the SSN we have for {{name}}?",
]

OWN_SECRET = [
    "Here is my config, why does it fail?\n{{secret}}\n",
    "```python\nclient = Client(\"{{secret}}\")\n```",
    "{\"service\": \"billing\", \"credential\": \"{{secret}}\"}",
    "deploy:\n  env:\n    TOKEN: {{secret}}\n",
    "I accidentally pasted {{secret}} into the ticket, can you summarise it anyway?",
    "export SERVICE_KEY={{secret}}",
]

NEGATIVES = [
    "Request {{uuid}} failed at {{timestamp}}; retry scheduled.",
    "Fixed in commit {{sha}} (release v{{version}}).",
    "Order #{{order}} shipped on {{date}} to {{city}}.",
    "Set the key with export API_KEY=<your-api-key> and restart.",
    "Example: postgres://user:password@localhost:5432/app",
    "Use AKIAIOSFODNN7EXAMPLE as a placeholder access key in the docs.",
    "Tracking number {{order}}{{order}} — delivered {{date}}.",
    "Build {{version}} took {{n}} ms on node {{uuid}}.",
]

B64 = string.ascii_letters + string.digits


def secret(r: random.Random) -> str:
    def rnd(n, alphabet=B64):
        return "".join(r.choice(alphabet) for _ in range(n))
    kinds = [
        lambda: "AKIA" + rnd(16, string.ascii_uppercase + "234567"),
        lambda: "ghp_" + rnd(36),
        lambda: "glpat-" + rnd(20),
        lambda: "npm_" + rnd(36),
        lambda: f"xoxb-{rnd(12, string.digits)}-{rnd(13, string.digits)}-{rnd(24)}",
        lambda: "sk_live_" + rnd(28),
        lambda: "sk-proj-" + rnd(48),
        lambda: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ" + rnd(40, B64 + "-_") + "." + rnd(43, B64 + "-_"),
        lambda: f"postgres://svc:{rnd(14)}@db.internal:5432/main",
        lambda: "Authorization: Bearer " + rnd(40),
        lambda: f"db_password = \"{rnd(10)}!{rnd(3, string.digits)}\"",
        lambda: "AIza" + rnd(35, B64 + "-_"),
        lambda: "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(rnd(64, B64 + "+/") for _ in range(4))
                + "\n-----END RSA PRIVATE KEY-----",
    ]
    return r.choice(kinds)()


def fill(template: str, fake: Faker, r: random.Random) -> tuple[str, list[str]]:
    types = []

    def day():
        return f"{r.randint(1950, 2025)}-{r.randint(1, 12):02}-{r.randint(1, 28):02}"

    def one(m):
        key = m.group(1)
        if key in LABELLED:
            types.append(LABELLED[key])
        if key == "secret":
            types.append("secret")
            return secret(r)
        special = {
            "uuid": lambda: str(uuid.UUID(int=r.getrandbits(128))),
            # dates from the seeded generator (Faker's are relative to today)
            "timestamp": lambda: f"{day()}T{r.randint(0, 23):02}:{r.randint(0, 59):02}:{r.randint(0, 59):02}Z",
            "date_time": lambda: f"{day()} {r.randint(0, 23):02}:{r.randint(0, 59):02}",
            "date": day,
            "date_of_birth": day,
            "year": lambda: str(r.randint(1950, 2025)),
            "sha": lambda: "%040x" % r.getrandbits(160),
            "version": lambda: f"{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
            "order": lambda: str(r.randint(10**7, 10**9)),
            "n": lambda: str(r.randint(1, 99999)),
            "person": fake.name,
            # real mailbox domains: example.com and friends are documentation's (RFC 2606)
            "email": fake.free_email,
            # the detectors know US numbers only (README): other countries' ids are not labelled
            "ssn": fake["en_US"].ssn,
        }
        if key in special:
            return special[key]()
        try:
            return str(getattr(fake, key)())
        except AttributeError:
            return fake.word()
    text = re.sub(r"\{\{([a-z_]+)\}\}", one, template)
    return text, sorted(set(types))


def main() -> int:
    with zipfile.ZipFile(sys.argv[1]) as z:
        presidio = z.read("presidio_evaluator/data_generator/raw_data/templates.txt").decode()
    templates = [t.strip() for t in presidio.splitlines() if t.strip()]
    templates += OWN_PII + OWN_SECRET * 3 + NEGATIVES
    fake = Faker(["en_US", "en_GB", "de_DE"])
    Faker.seed(SEED)
    r = random.Random(SEED)
    out = {"dev": [], "held-out": []}
    for i, t in enumerate(templates):
        split = "dev" if i % 2 == 0 else "held-out"
        for _ in range(5):
            text, types = fill(t, fake, r)
            out[split].append({"text": text, "types": types})
    for split, rows in out.items():
        with open(HERE / f"{split}.jsonl", "w") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(split, len(rows), "texts,", sum(bool(x["types"]) for x in rows), "labelled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
