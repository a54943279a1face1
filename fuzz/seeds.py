#!/usr/bin/env python3
"""Writes the seed inputs of the three fuzz targets into fuzz/corpus/<target>/ (deterministic:
the same files every run). `cargo +nightly fuzz run TARGET` grows a corpus from them. The
corpus in the repository is replayed by `make test`: the seeds, the inputs that once crashed a
target (regression-*), and what fuzzing found, minimised (`cargo fuzz cmin`) and then kept
smallest-first up to 256 KB per target (`python3 fuzz/seeds.py --trim`), so the repository stays
small while the replay keeps most of the coverage."""
import hashlib
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / ("seed-" + hashlib.sha1(data).hexdigest())).write_bytes(data)


# protobuf wire format, enough for these messages
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, float):
        return varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(fields)


def policies():
    write("policy_parser", (ROOT / "policies" / "default.yaml").read_text())
    for case in sorted((ROOT / "gateway" / "tests" / "decisions").glob("*.yaml")):
        text = case.read_text()
        # the policy part of a decision case, when it has one
        write("policy_parser", text)
    for text in [
        "routes: []\n",
        "default_data_class: secret\nroutes:\n  - name: a\n",
        "routes:\n  - name: a\n    min_quality: 2\n    spill: sometimes\n",
        "routes:\n  - name: a\n    external:\n      allowed: true\n      provider: p\n      model: m\n      data_classes: [confidential]\n      when: [no_local_capacity]\n      daily_budget_usd: -1\n",
        "routes:\n  - &a {name: x}\n  - *a\n",
        "routes:\n  - name: a\n    match: {tenants: [shop], tasks: [generate, embed], data_classes: [public]}\n    latency_target_ms: 0\n",
        "{",
        "routes:\n\t- name: tab\n",
    ]:
        write("policy_parser", text)


def manifests():
    for m in sorted((ROOT / "tests" / "fixtures" / "models").glob("*/model.toml")):
        write("manifest_parser", m.read_text())
    for text in [
        'name = "x"\ntask = "generate"\nparameters = 1\nquality = 1.5\ncontext_length = 0\n',
        'name = ""\ntask = "dance"\n',
        'name = "e"\ntask = "embed"\nparameters = 1\nquality = 0.5\ncontext_length = 8\n[embed]\noutput = "o"\npooling = "max"\ndimensions = 0\n',
        'name = "c"\ntask = "classify"\nparameters = 1\nquality = 0.5\ncontext_length = 8\n[classify]\nlabels = []\n',
        "[[[",
    ]:
        write("manifest_parser", text)


def requests():
    hints = msg(field(1, "confidential"), field(2, 0.5), field(3, 1000), field(4, "generate"))
    prompt = msg(field(2, "What is the capital of France?"), field(4, 64))
    chat = msg(
        field(3, msg(field(1, msg(field(1, "system"), field(2, "be brief"))),
                     field(1, msg(field(1, "user"), field(2, "hello"))))),
        field(4, 16), field(5, 0.7), field(6, 0.9), field(7, 40), field(8, 7), field(9, "\n\n"),
    )
    write("request_validation", b"\x00" + msg(field(1, prompt), field(2, hints)))
    write("request_validation", b"\x00" + msg(field(1, chat)))
    write("request_validation", b"\x00" + msg(field(1, msg(field(2, "x"), field(4, 1_000_000)))))
    write("request_validation", b"\x00" + msg(field(1, msg(field(3, msg(field(1, msg(field(1, "root")))))))))
    write("request_validation", b"\x00" + msg(field(1, msg(field(2, "x"), field(5, float("nan"))))))
    embed = msg(field(2, "one"), field(2, "two"))
    write("request_validation", b"\x01" + msg(field(1, embed), field(2, msg(field(1, "public")))))
    write("request_validation", b"\x01" + msg(field(1, msg(*[field(2, "t")] * 20))))
    write("request_validation", b"\x01" + msg(field(2, msg(field(2, float("inf"))))))
    write("request_validation", b"\x02" + msg(field(1, 1), field(3, "explain me"), field(4, 32)))
    write("request_validation", b"\x02" + msg(field(2, msg(field(1, "nope"))), field(3, "x" * 3000)))


def trim(limit=256 << 10):
    # seeds and regressions stay; then the smallest other inputs up to `limit` bytes
    for t in sorted(CORPUS.iterdir()):
        files = sorted(t.iterdir(), key=lambda f: (f.stat().st_size, f.name))
        kept = 0
        for f in files:
            keep = f.name.startswith(("seed-", "regression-"))
            if not keep and kept + f.stat().st_size <= limit:
                keep = True
                kept += f.stat().st_size
            if not keep:
                f.unlink()


if __name__ == "__main__":
    import sys

    policies()
    manifests()
    requests()
    if "--trim" in sys.argv:
        trim()
    for t in sorted(CORPUS.iterdir()):
        print(f"{t.name}: {len(list(t.iterdir()))} files")
