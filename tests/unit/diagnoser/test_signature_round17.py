"""Round 17's partial-copy false pairs (issue 18; docs/BENCHMARKS.md "Round 17"): kb-679 (init's death on a Jetson,
`Attempted to kill init!`, 4.9) joined kb-321 (the same panic on a Qualcomm board, 4.14) and kb-684 (a second report
of a 7.x kswapd oops, RIP `do_exit`, `make_task_dead`) at level 2 — 16 false pairs, the three reports three bugs per
their sources. What they shared is the path of a dying task: `do_exit` (where init's death panics, whatever made init
exit) and `make_task_dead` (oops_end() for every oops). With both generic frames the pairs are gone and the partial-copy
set's other figures are unchanged (the pair is held-out data: spent, tests/data/kb/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.diagnoser.kb.signature import extract_reports, is_generic_frame
from nodeheal.sim.bench.kb import partial_copy_robustness
from tests.unit.diagnoser.kbdata import excerpts

DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
CORPUS = {
    row["id"]: row
    for row in (json.loads(line) for line in (DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line)
}


def test_the_dying_task_path_is_no_identity() -> None:
    assert is_generic_frame("do_exit") and is_generic_frame("make_task_dead")
    (jetson,) = extract_reports(CORPUS["kb-679"]["lines"])
    (kswapd,) = extract_reports(CORPUS["kb-684"]["lines"])
    assert kswapd.rip_func == "do_exit"
    assert not jetson.identified() and not kswapd.identified()


def test_round_17s_false_pairs_are_gone() -> None:
    scores = partial_copy_robustness(excerpts("kb-321", "kb-679", "kb-684"))
    assert scores["false_pairs"] == []
    assert scores["similarity"]["fp"] == 0 and scores["exact_key"]["fp"] == 0
