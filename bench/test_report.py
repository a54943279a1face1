"""Tests for bench/report.py: BENCHMARKS.md is rendered from result rows, goals are judged
from the figures, and the parts a run did not measure are kept from the current file.
Run by `make test` (python3 -m unittest discover -s bench)."""
import json
import pathlib
import tempfile
import unittest

import report


def write_rows(d, name, rows):
    (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def ledger_row(variant, load, callers, cps=3000.0, p99=2.0, wait=20.0, stalled=False):
    if stalled:
        return {"variant": variant, "load": load, "callers": callers, "stalled": True, "stalled_after_s": 25.0}
    return {"variant": variant, "load": load, "callers": callers, "seconds": 5.0, "cycles": int(cps * 5),
            "errors": 0, "cycles_per_s": cps, "reserve_p50_ms": p99 / 2, "reserve_p99_ms": p99,
            "max_wait_ms": wait, "bound_ms": 2000, "writes_per_flush": 4.0, "stalled": False}


def decide_row(bench, nodes, median):
    return {"bench": bench, "nodes": nodes, "models": nodes * 10, "median_us": median,
            "ci_low_us": median * 0.9, "ci_high_us": median * 1.1}


class RenderTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = pathlib.Path(self.tmp.name)
        self.target = self.dir / "BENCHMARKS.md"

    def tearDown(self):
        self.tmp.cleanup()

    def test_ledger_goals_and_stalls(self):
        write_rows(self.dir, "ledger", [
            ledger_row("store", "idle", 8, cps=4000, p99=1.5),
            ledger_row("reference", "idle", 8, cps=3000, p99=3.0),
            ledger_row("store", "idle", 32, cps=3900, p99=7.5),
            ledger_row("reference", "idle", 32, stalled=True),
            ledger_row("store", "two CPU burners", 32, cps=3000, p99=15, wait=30),
            ledger_row("reference", "two CPU burners", 32, stalled=True),
        ])
        text = report.render(self.dir, self.target)
        self.assertIn("## Budget ledger and audit store", text)
        self.assertIn("| idle | 8 | 4,000/s, 0.75 / 1.50 ms |", text)
        self.assertIn("**stalled** (no answer in 25 s; killed)", text)
        self.assertIn("met at 8 callers, not met at 32", text)
        self.assertIn("the replaced design stalled in 2 of 3 runs", text)
        # an unmet goal is listed with what limits it
        self.assertIn("## Goals not met, and what limits them", text)
        self.assertIn("one flush at a time".lower(), text.lower())

    def test_decide_goal_counts_the_trace_on_the_slower_fleet(self):
        rows = [decide_row(b, n, m) for b, n, m in [
            ("decide", 10, 1.0), ("decide", 100, 2.0), ("decide", 1000, 4.0),
            ("decide_and_trace", 10, 2.0), ("decide_and_trace", 100, 4.0), ("decide_and_trace", 1000, 8.0),
            ("served_mixed", 10, 2.0), ("served_mixed", 100, 5.0), ("served_mixed", 1000, 12.0),
        ]]
        write_rows(self.dir, "decide", rows)
        text = report.render(self.dir, self.target)
        self.assertIn("| 1000 × 10 | 4.00 | 3.60 – 4.40 | 4.0× | 8.00 | 12.00 |", text)
        self.assertIn("12.00 µs with the response trace", text)
        self.assertIn("(goal ≤ 10 µs including the trace: not met)", text)

    def test_parts_not_run_are_kept_from_the_current_file(self):
        self.target.write_text("# Benchmarks\n\n## Headlines\n\n- Embedding 17 tokens: kept\n\n"
                               "## Embedding\n\nold embedding table\n")
        write_rows(self.dir, "ledger", [ledger_row("store", "idle", 2), ledger_row("reference", "idle", 2)])
        text = report.render(self.dir, self.target)
        self.assertIn("## Embedding\n\nold embedding table", text)
        self.assertIn("- Embedding 17 tokens: kept", text)
        self.assertIn("## Budget ledger and audit store", text)

    def test_main_writes_the_target(self):
        write_rows(self.dir, "ledger", [ledger_row("store", "idle", 2)])
        report.main([str(self.dir), str(self.target)])
        self.assertTrue(self.target.read_text().startswith("# Benchmarks"))


if __name__ == "__main__":
    unittest.main()
