"""Branch bucket12 (issue 18, crash buckets that survive partial copies; docs/BENCHMARKS.md): the partial-copy set split
into a tuning and a held-out half by bug (`half_of`, as the same-bug sets), its false pairs listed with their half, and
what the level-2 buckets do with the reports behind every false pair left: a header and an `IP:` line of one function
with one fault address, on two kernel builds. Tested on the corpus excerpts of those pairs (kb-176 and kb-608, both in
the tuning half; kb-083 in the tuning half and kb-142 in the held-out one)."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.sim.bench.kb import Excerpt, half_of, partial_copy_robustness

DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
CORPUS = {
    row["id"]: row
    for row in (json.loads(line) for line in (DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line)
}


def _excerpts(*ids: str) -> list[Excerpt]:
    return [
        Excerpt(
            id=e,
            cls=CORPUS[e]["class"],
            lines=tuple(CORPUS[e]["lines"]),
            source=CORPUS[e]["source"],
            split=CORPUS[e]["split"],
            group=CORPUS[e].get("group"),
        )
        for e in ids
    ]


def test_the_partial_copies_are_scored_per_half_and_list_their_false_pairs() -> None:
    assert [half_of(CORPUS[e].get("group") or e) for e in ("kb-176", "kb-608", "kb-083", "kb-142")] == [
        "tune",
        "tune",
        "tune",
        "held_out",
    ]
    scores = partial_copy_robustness(_excerpts("kb-176", "kb-608", "kb-083", "kb-142"))
    halves = scores["halves"]
    assert halves["tune"]["reports"] + halves["held_out"]["reports"] == scores["reports"]
    assert halves["tune"]["similarity"]["fp"] == 4  # kb-176 and kb-608, each with its copy without the header
    assert halves["held_out"]["similarity"]["fp"] == 0  # kb-142 alone in its half
    assert scores["across_halves_false_pairs"]["similarity"] == 6  # kb-083 (2 reports) × kb-142 (3)
    listed = scores["false_pairs"]
    assert len(listed) == scores["similarity"]["fp"] == 10
    assert {"reports": ["kb-176", "kb-608"], "half": "tune"} in listed
    assert {"reports": ["kb-083/no_header_line", "kb-142/no_cpu_line"], "half": "across"} in listed
