"""The knowledge-base corpus as the emitter and signature tests read it: its rows by id, a real line of a row, and rows
as the bench's excerpts."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.sim.bench.kb import Excerpt

KB_DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = {row["id"]: row for row in map(json.loads, (KB_DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines())}
# the quiet lines of benign.txt (its `#` lines name the thread each block comes from)
BENIGN = [line for line in (KB_DATA / "benign.txt").read_text(encoding="utf-8").splitlines() if line and line[0] != "#"]


def real(excerpt: str, needle: str) -> str:
    """The first line of corpus row `excerpt` that holds `needle`."""
    return next(line for line in ROWS[excerpt]["lines"] if needle in line)


def excerpts(*ids: str) -> list[Excerpt]:
    """Corpus rows as `nodeheal bench kb` reads them."""
    return [
        Excerpt(
            id=e,
            cls=ROWS[e]["class"],
            lines=tuple(ROWS[e]["lines"]),
            source=ROWS[e]["source"],
            split=ROWS[e]["split"],
            group=ROWS[e].get("group"),
        )
        for e in ids
    ]
