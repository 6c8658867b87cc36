"""The fleet-like same-bug set `tests/data/kb/tracker_same_bug.jsonl` (round 12, see the README next to it).

Real crash reports from public GitHub issues, grouped by what their sources say. These tests check the data a
reader relies on when judging the bucket figures: every report can be traced to its page, says which bug it is
filed under and why, and the bench reads the same rows the file holds. They do not score the buckets (that is
`nodeheal bench kb`, docs/BENCHMARKS.md round 12: the set is a held-out measurement of the identity code).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from nodeheal.sim.bench.kb import load_syzbot

KB_DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
NAME = "tracker_same_bug.jsonl"
ROWS = [json.loads(line) for line in (KB_DATA / NAME).read_text(encoding="utf-8").splitlines() if line.strip()]
ISSUE_URL = re.compile(r"^https://github\.com/[\w.-]+/[\w.-]+/issues/\d+$")


def test_every_report_has_its_page_its_bug_and_how_it_was_obtained() -> None:
    for row in ROWS:
        assert ISSUE_URL.match(row["source"]), row["id"]
        assert row["group"].startswith("trk:"), row["id"]
        assert row["role"] in {"same-bug", "look-alike"}, row["id"]
        assert row["reporter"] and row["declared"], row["id"]
        assert row["obtained"].startswith("search tool, issues corpus, query: "), row["id"]
        assert row["split"] == "fresh"
        assert row["lines"] and all(isinstance(line, str) for line in row["lines"]), row["id"]
        assert any(line.strip() for line in row["lines"]), row["id"]
    assert [row["id"] for row in ROWS] == [f"trk-{n:03d}" for n in range(1, len(ROWS) + 1)]


def test_the_set_is_large_enough_to_say_something() -> None:
    sizes = Counter(row["group"] for row in ROWS)
    several = [group for group, n in sizes.items() if n > 1]
    assert len(ROWS) >= 45
    assert len(several) >= 15
    # a look-alike is another bug than every group it resembles: a group of its own, never inside a same-bug group
    for row in ROWS:
        if row["role"] == "look-alike":
            assert sizes[row["group"]] == 1, row["id"]
        else:
            assert sizes[row["group"]] > 1, row["id"]


def test_no_report_is_pasted_twice() -> None:
    texts = Counter("\n".join(row["lines"]) for row in ROWS)
    assert max(texts.values()) == 1


def test_the_bench_reads_every_row_under_its_group() -> None:
    crashes = load_syzbot(KB_DATA, NAME)
    assert [(c.id, c.group, list(c.lines)) for c in crashes] == [(r["id"], r["group"], r["lines"]) for r in ROWS]
