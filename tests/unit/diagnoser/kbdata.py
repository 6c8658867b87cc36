"""The knowledge-base corpus as the emitter tests read it: its rows by id, and a real line of a row."""

from __future__ import annotations

import json
from pathlib import Path

KB_DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = {row["id"]: row for row in map(json.loads, (KB_DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines())}


def real(excerpt: str, needle: str) -> str:
    """The first line of corpus row `excerpt` that holds `needle`."""
    return next(line for line in ROWS[excerpt]["lines"] if needle in line)
