"""`nodeheal bench kb`: the knowledge base on the real corpus (tests/data/kb), measured.

- classification: every excerpt of `corpus.jsonl` (and of the older `kernel-log-samples.jsonl`) goes
  through `analyse()`; its primary class is compared with the label. Per-class precision / recall / F1,
  a confusion table (true → predicted, `none` when nothing matched), accuracy overall and split into
  `train` (excerpts whose misses were allowed to motivate rules) and `test` (held out: only judged), and
  for the third round (`round: 3`) separately: `fresh_test` is its held-out half; rounds 4 and 5 (all
  held out) each on their own; round 6 whole, and its train / test halves;
  round 7 (all held out) on its own; round 8 whole, and its train / test halves (split like round 6);
  round 9 (all held out) on its own; round 10 whole, and its train / test halves (split like round 8);
  round 11 (all held out) whole and as its test split; rounds 12 and 13 likewise; rounds 14 and 15 (all held
  out) as their test split.
- buckets: every crash report cut from the excerpts; two reports are "the same bug" when their source
  says so (the excerpt's `group`, or several reports of one problem pasted in one excerpt). Pairwise
  precision / recall / F1 of the exact key (level 1) and of the similarity clusters (level 2).
- syzbot_fix_same_bug: both bucket levels on real syzbot crash reports grouped by the commit that fixed
  them (`syzbot_fix_same_bug.jsonl`), pairwise, overall and per split;
  syzbot_dup_same_bug: a second such set, committed before the round-8 bucket work ran on it
  (`syzbot_dup_same_bug.jsonl`); syzbot_xfn_same_bug: fix-grouped bugs seen in different functions
  (`syzbot_xfn_same_bug.jsonl`, committed after that work). Each set also scored per half (`half_of`: the
  groups split by a hash of the group id into a tuning and a held-out half, round 11). tracker_same_bug: real
  crash reports from public trackers (GitHub issues of WSL, kubernetes, moby, coreos, raspberrypi, openzfs,
  openwrt…), grouped by what their sources say (a thread's "same here" copies, a reporter's repeats), plus
  look-alikes of other bugs (`tracker_same_bug.jsonl`, round 12, committed before any code ran on it). (The syzkaller
  test-data, mailed, dup-marked and bugzilla sets were removed, tests/data/README.md "Provenance".) `buckets`
  repeats each set's pairwise figures of both levels in one place.
- speed: the matcher on the benign lines (what most of a node's log is: the pre-filter rejects them)
  and the detector's coarse pre-filter on the same lines, lines per second; with a baseline rules file,
  both rule sets timed in the same process.
Pure CPU; no NATS.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import Matcher, analyse, default_matcher, load_knowledge_base
from nodeheal.diagnoser.kb.loader import Rule
from nodeheal.diagnoser.kb.signature import CrashReport, cluster_reports, extract_reports
from nodeheal.schemas.kernel import KERNEL_LOG_CLASSES

NONE = "none"


@dataclass(frozen=True, slots=True)
class Excerpt:
    id: str
    cls: str
    lines: tuple[str, ...]
    source: str
    split: str
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class CorpusError(ValueError):
    """The corpus directory is missing or a row is malformed; the message says which."""


def load_corpus(directory: Path) -> tuple[list[Excerpt], list[str]]:
    """Excerpts of `corpus.jsonl` (+ `../kernel-log-samples.jsonl` as split `samples`) and benign lines."""
    corpus = directory / "corpus.jsonl"
    if not corpus.is_file():
        raise CorpusError(f"no corpus at {corpus}; pass --corpus DIR (the repository's tests/data/kb)")
    excerpts: list[Excerpt] = []
    for number, text in enumerate(corpus.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            excerpts.append(
                Excerpt(
                    id=str(row["id"]),
                    cls=str(row["class"]),
                    lines=tuple(row["lines"]),
                    source=str(row["source"]),
                    split=str(row["split"]),
                    group=row.get("group"),
                    meta={k: row.get(k) for k in ("distro", "kernel", "locale", "round")},
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorpusError(f"{corpus}:{number}: {exc}") from exc
    samples = directory.parent / "kernel-log-samples.jsonl"
    if samples.is_file():
        for number, text in enumerate(samples.read_text(encoding="utf-8").splitlines(), 1):
            if text.strip():
                row = json.loads(text)
                excerpts.append(
                    Excerpt(f"sample-{number:03d}", row["class"], tuple(row["lines"]), row["source"], "samples")
                )
    benign_file = directory / "benign.txt"
    benign = [
        line for line in benign_file.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")
    ]
    return excerpts, benign


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def classification(excerpts: Sequence[Excerpt]) -> dict[str, Any]:
    predicted: dict[str, str] = {}
    for excerpt in excerpts:
        primary = analyse(list(excerpt.lines)).primary
        predicted[excerpt.id] = primary.cls if primary is not None else NONE
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for excerpt in excerpts:
        confusion[excerpt.cls][predicted[excerpt.id]] += 1
    per_class: dict[str, dict[str, float | int]] = {}
    for cls in KERNEL_LOG_CLASSES:
        tp = confusion[cls][cls]
        fn = sum(confusion[cls].values()) - tp
        fp = sum(row[cls] for true, row in confusion.items() if true != cls)
        per_class[cls] = {"support": tp + fn, **_prf(tp, fp, fn)}

    def accuracy(split: str | None, round_: int | None = None) -> dict[str, float | int]:
        chosen = [
            e
            for e in excerpts
            if (split is None or e.split == split) and (round_ is None or e.meta.get("round") == round_)
        ]
        right = sum(predicted[e.id] == e.cls for e in chosen)
        return {"excerpts": len(chosen), "right": right, "accuracy": round(right / len(chosen), 4) if chosen else 1.0}

    misses = [
        {"id": e.id, "split": e.split, "label": e.cls, "predicted": predicted[e.id], "source": e.source}
        for e in excerpts
        if predicted[e.id] != e.cls
    ]
    return {
        "accuracy": {
            "all": accuracy(None),
            "corpus": {
                "excerpts": sum(e.split != "samples" for e in excerpts),
                "right": sum(predicted[e.id] == e.cls for e in excerpts if e.split != "samples"),
            },
            "train": accuracy("train"),
            "test": accuracy("test"),
            # round 3 (kb-219…): committed before any rule saw them; its `test` half is the fresh held-out set
            "round3_all": accuracy(None, 3),
            "round3_train": accuracy("train", 3),
            "fresh_test": accuracy("test", 3),
            # round 4 (kb-293…): all held out, committed after the round-3 rules were final
            "round4_test": accuracy("test", 4),
            # round 5 (kb-300…): all held out, committed after the unwrapping step and before it was run on them
            "round5_test": accuracy("test", 5),
            # round 6 (kb-317…): committed before any code was run on them, split by URL hash like round 3;
            # `round6_all` measured before any rule is the untouched figure, `round6_test` stays held out
            "round6_all": accuracy(None, 6),
            "round6_train": accuracy("train", 6),
            "round6_test": accuracy("test", 6),
            # round 7 (kb-351…): all held out, committed after the round-6 rules were final, measured once
            "round7_test": accuracy("test", 7),
            # round 8 (kb-368…): committed before any code was run on them, split by URL hash like round 6;
            # `round8_all` measured before any rule is the untouched figure, `round8_test` stays held out
            "round8_all": accuracy(None, 8),
            "round8_train": accuracy("train", 8),
            "round8_test": accuracy("test", 8),
            # round 9 (kb-412…): all held out, committed after the round-8 rules were final, measured once
            "round9_test": accuracy("test", 9),
            # round 10 (kb-429…): split by URL hash before any rule, its held-out half committed first; rules
            # from its train half only; `round10_test` is measured once, after those rules were final
            "round10_all": accuracy(None, 10),
            "round10_train": accuracy("train", 10),
            "round10_test": accuracy("test", 10),
            # round 11 (kb-462…): all held out, committed after the rules written from the emitters' format strings
            # were final and before any code ran on it; measured once
            "round11_all": accuracy(None, 11),
            "round11_test": accuracy("test", 11),
            # round 12 (kb-492…): all held out, committed after the cross-line shutdown run (branch kb8) was final
            # and before any code ran on it; measured once
            "round12_all": accuracy(None, 12),
            "round12_test": accuracy("test", 12),
            # round 13 (kb-522…): all held out, committed after the kb9 emitter rules were final and before any code
            # ran on it; measured once
            "round13_all": accuracy(None, 13),
            "round13_test": accuracy("test", 13),
            # round 14 (kb-555…): all held out, committed before any code ran on it, measured once after the kb10,
            # kbshut and kb11 rules were merged (docs/BENCHMARKS.md)
            "round14_test": accuracy("test", 14),
            # round 15 (kb-592…): all held out, collected while branches kb12 and kbshut2 read round 14's misses,
            # committed before any code ran on it, measured once after both were merged (docs/BENCHMARKS.md)
            "round15_test": accuracy("test", 15),
            # round 16 (kb-630…): all held out, collected from new sources on branch round16, committed before any code
            # ran on it, measured once at that branch (docs/BENCHMARKS.md)
            "round16_test": accuracy("test", 16),
            # round 17 (kb-670…): split by URL hash (sha1 mod 10 < 3 → test) when committed, before any code ran on
            # it; `round17_all` measured before any rule is the untouched figure, `round17_test` stays held out
            "round17_all": accuracy(None, 17),
            "round17_train": accuracy("train", 17),
            "round17_test": accuracy("test", 17),
            "samples": accuracy("samples"),
        },
        "per_class": per_class,
        "lowest_recall_class": min(
            (c for c in per_class if per_class[c]["support"]), key=lambda c: per_class[c]["recall"]
        ),
        "confusion": {true: dict(row) for true, row in sorted(confusion.items())},
        "misses": misses,
    }


@dataclass(frozen=True, slots=True)
class LabelledReport:
    excerpt: str
    truth: str  # same value = same bug, per the source
    report: CrashReport


def labelled_reports(excerpts: Iterable[Excerpt]) -> list[LabelledReport]:
    """Crash reports of the excerpts; the truth is the declared group, else the excerpt itself (one
    problem pasted several times in one excerpt is one bug, per its reporter)."""
    out: list[LabelledReport] = []
    for excerpt in excerpts:
        for report in extract_reports(list(excerpt.lines)):
            out.append(LabelledReport(excerpt.id, excerpt.group or f"excerpt:{excerpt.id}", report))
    return out


def pairwise(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float | int]:
    tp = fp = fn = 0
    for i, j in combinations(range(len(truth)), 2):
        same_truth, same_pred = truth[i] == truth[j], predicted[i] == predicted[j]
        tp += same_truth and same_pred
        fp += same_pred and not same_truth
        fn += same_truth and not same_pred
    return {"true_pairs": tp + fn, "tp": tp, "fp": fp, "fn": fn, **_prf(tp, fp, fn)}


def bucketing(excerpts: Sequence[Excerpt]) -> dict[str, Any]:
    every = labelled_reports(excerpts)
    reports = [r for r in every if r.report.identified()]
    truth = [r.truth for r in reports]
    exact = [r.report.signature().bucket for r in reports]
    clusters = cluster_reports([r.report for r in reports])
    groups = Counter(truth)
    return {
        "reports": len(reports),
        "reports_without_identity": len(every) - len(reports),
        "bugs_with_several_reports": sum(1 for n in groups.values() if n > 1),
        "declared_groups": sorted(g for g, n in Counter(e.group for e in excerpts if e.group).items() if n > 1),
        "exact_key": pairwise(truth, exact),
        "similarity": pairwise(truth, [str(c) for c in clusters]),
        "buckets": len(set(clusters)),
    }


_RIP_LINE = re.compile(r"RIP: |\bIP: |\bpc : |PC is at |EIP: ")
_CPU_LINE = re.compile(r"CPU: \d+ (?:UID: \d+ )?PID: \d+ Comm: |Pid: \d+, comm: ")
_TRACE_LINE = re.compile(r"Call Trace|Call trace|\+0x[0-9a-f]+/0x[0-9a-f]+")


def partial_copies(lines: Sequence[str]) -> dict[str, list[str]]:
    """What copies of one report typically lack (mail quotes, pastes, pstore fragments): the RIP line,
    the header line, the call trace, the `CPU: … Comm:` line."""
    reports = extract_reports(list(lines))
    header = reports[0].start if reports else 0
    return {
        "no_rip_line": [line for line in lines if not _RIP_LINE.search(line)],
        "no_header_line": [line for i, line in enumerate(lines) if i != header],
        "no_call_trace": [line for line in lines if not _TRACE_LINE.search(line) or _RIP_LINE.search(line)],
        "no_cpu_line": [line for line in lines if not _CPU_LINE.search(line)],
    }


def partial_copy_robustness(excerpts: Sequence[Excerpt]) -> dict[str, Any]:
    """Derived from the real reports: each identified single-report excerpt plus its partial copies is one
    bug; every other report is another. Pairwise scores of both levels over all of them."""
    truth: list[str] = []
    reports: list[CrashReport] = []
    names: list[str] = []  # `<excerpt>` for the excerpt's own report, `<excerpt>/<copy>` for a partial copy
    lost: Counter[str] = Counter()
    for excerpt in excerpts:
        found = [r for r in extract_reports(list(excerpt.lines)) if r.identified()]
        if len(found) != 1:
            continue
        bug = excerpt.group or excerpt.id
        truth.append(bug)
        reports.append(found[0])
        names.append(excerpt.id)
        for name, copy in partial_copies(excerpt.lines).items():
            if list(copy) == list(excerpt.lines):
                continue
            copies = [r for r in extract_reports(copy) if r.identified()]
            if len(copies) != 1:
                lost[name] += 1  # the copy no longer holds an identifiable report
                continue
            truth.append(bug)
            reports.append(copies[0])
            names.append(f"{excerpt.id}/{name}")
    clusters = [str(c) for c in cluster_reports(reports)]
    exact = [r.bucket() for r in reports]
    halves = [half_of(bug) for bug in truth]
    across = [(i, j) for i, j in combinations(range(len(truth)), 2) if halves[i] != halves[j]]

    def half(name: str) -> dict[str, Any]:
        chosen = [i for i, h in enumerate(halves) if h == name]
        part_truth = [truth[i] for i in chosen]
        part = cluster_reports([reports[i] for i in chosen])
        return {
            "reports": len(chosen),
            "bugs": len(set(part_truth)),
            "exact_key": pairwise(part_truth, [exact[i] for i in chosen]),
            "similarity": pairwise(part_truth, [str(c) for c in part]),
        }

    return {
        "reports": len(reports),
        "bugs": len(set(truth)),
        "copies_without_identity": dict(lost),
        "exact_key": pairwise(truth, exact),
        "similarity": pairwise(truth, clusters),
        # the bugs split like the same-bug sets' groups (`half_of` of the excerpt's group, else its id; branch
        # bucket12, fixed before any code change of that branch): pairs inside each half, and how many pairs
        # across the halves (always two bugs) each level joins
        "halves": {name: half(name) for name in ("tune", "held_out")},
        "across_halves_false_pairs": {
            "exact_key": sum(exact[i] == exact[j] for i, j in across),
            "similarity": sum(clusters[i] == clusters[j] for i, j in across),
        },
        # every pair of two bugs the level-2 clusters join, and where it lies: inside the tuning half, inside the
        # held-out half, or across them
        "false_pairs": [
            {"reports": [names[i], names[j]], "half": halves[i] if halves[i] == halves[j] else "across"}
            for i, j in combinations(range(len(truth)), 2)
            if clusters[i] == clusters[j] and truth[i] != truth[j]
        ],
    }


@dataclass(frozen=True, slots=True)
class SyzbotCrash:
    id: str
    group: str  # the syzbot bug: crashes joined by a shared title or alt title (syzbot's own merge rule)
    split: str
    lines: tuple[str, ...]


def load_syzbot(directory: Path, name: str) -> list[SyzbotCrash]:
    """A same-bug set (`syzbot_fix_same_bug.jsonl`, …, `tracker_same_bug.jsonl`): real crash reports with the bug
    each is filed under (README)."""
    path = directory / name
    if not path.is_file():
        return []
    out: list[SyzbotCrash] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            out.append(SyzbotCrash(str(row["id"]), str(row["group"]), str(row["split"]), tuple(row["lines"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorpusError(f"{path}:{number}: {exc}") from exc
    return out


def half_of(group: str) -> str:
    """The half of a same-bug set a group belongs to (round 11, branch bucket8, fixed before any code change of
    that round): `tune` when the first 8 hex digits of sha1(group id), read as an integer, are even, else
    `held_out`. Whole groups move together (a hard negative is a group of its own); changes may be written from
    the `tune` half's pairs only."""
    digest = hashlib.sha1(group.encode(), usedforsecurity=False).hexdigest()
    return "tune" if int(digest[:8], 16) % 2 == 0 else "held_out"


def syzbot_bucketing(crashes: Sequence[SyzbotCrash]) -> dict[str, Any]:
    """Both bucket levels on syzbot's own grouping: the first identified report of each crash log, pairwise
    over every crash of the set, for all crashes, per split (`train` groups were looked at while the
    frame lists were written; `test` groups, split by a hash of the group before that, were only judged) and
    per half (`half_of`: pairs inside the tuning half, pairs inside the held-out half; pairs across halves are
    only in `all`)."""

    def score(chosen: Sequence[SyzbotCrash]) -> dict[str, Any]:
        truth: list[str] = []
        reports: list[CrashReport] = []
        lost = 0
        lost_groups: list[str] = []
        for crash in chosen:
            found = [r for r in extract_reports(list(crash.lines)) if r.identified()]
            if not found:
                lost += 1
                lost_groups.append(crash.group)
                continue
            truth.append(crash.group)
            reports.append(found[0])
        sizes = Counter(truth)
        exact = [r.bucket() for r in reports]
        clusters = [str(c) for c in cluster_reports(reports)]
        halves = [half_of(group) for group in truth]
        across = [(i, j) for i, j in combinations(range(len(truth)), 2) if halves[i] != halves[j]]
        # every report of the set, a report without identity a bucket of its own: what a fleet sees, where a copy
        # the code cannot identify joins nothing (the scores above are over identified reports only)
        alone = [f"without-identity:{i}" for i in range(len(lost_groups))]
        every_truth = [*truth, *lost_groups]
        return {
            "crashes": len(chosen),
            "without_identity": lost,
            "bugs": len(sizes),
            "bugs_with_several_crashes": sum(1 for n in sizes.values() if n > 1),
            "exact_key": pairwise(truth, exact),
            "similarity": pairwise(truth, clusters),
            "over_every_report": {
                "exact_key": pairwise(every_truth, [*exact, *alone]),
                "similarity": pairwise(every_truth, [*clusters, *alone]),
            },
            # pairs with one report in each half (always two bugs: groups do not straddle): joined = false pairs
            "across_halves_false_pairs": {
                "exact_key": sum(exact[i] == exact[j] for i, j in across),
                "similarity": sum(clusters[i] == clusters[j] for i, j in across),
            },
        }

    splits = sorted({c.split for c in crashes})
    return {
        "all": score(crashes),
        **{split: score([c for c in crashes if c.split == split]) for split in splits},
        "halves": {half: score([c for c in crashes if half_of(c.group) == half]) for half in ("tune", "held_out")},
    }


def _rate(fn: Any, lines: Sequence[str], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for line in lines:
            fn(line)
        count += len(lines)
    return count / (time.perf_counter() - start)


def _scan_rates(matcher: Matcher, blocks: Sequence[list[str]], seconds: float) -> dict[str, int]:
    """Lines/s of `Matcher.scan` (rejoins wrapped lines) and of a plain `match_line` loop on the same blocks,
    interleaved over five rounds, median of each."""
    total = sum(len(block) for block in blocks)

    def rate(fn: Any) -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            for block in blocks:
                fn(block)
            count += total
        return count / (time.perf_counter() - start)

    def plain(block: list[str]) -> None:
        for i, line in enumerate(block):
            matcher.match_line(line, index=i)

    scan: list[float] = []
    loop: list[float] = []
    for _ in range(5):
        scan.append(rate(matcher.scan))
        loop.append(rate(plain))
    return {
        "scan_lines_per_s": round(sorted(scan)[2]),
        "match_line_loop_lines_per_s": round(sorted(loop)[2]),
    }


class _EveryRule(Matcher):
    """The matcher's rule dispatch before the literal index (up to 2026-12-02): a line that passes the pre-filter
    has every rule's literals tested. Same findings (tests/unit/diagnoser/test_kb_matcher.py); kept to time the
    two in one run."""

    def candidates(self, lowered: str) -> tuple[list[Rule], list[Rule]]:
        rules = self.kb.rules
        return [r for r in rules if not r.fallback], [r for r in rules if r.fallback]


def _dispatch_rates(matcher: Matcher, lines: Sequence[str], seconds: float) -> dict[str, Any]:
    """Benign lines/s of the literal-indexed dispatch and of the every-rule one, same rules, same lines,
    interleaved over five rounds, median of each."""
    every_rule = _EveryRule(matcher.kb)
    rounds: dict[str, list[float]] = {"indexed": [], "every_rule": []}
    for _ in range(5):
        rounds["every_rule"].append(_rate(every_rule.match_line, lines, seconds / 5))
        rounds["indexed"].append(_rate(matcher.match_line, lines, seconds / 5))
    median = {k: sorted(v)[len(v) // 2] for k, v in rounds.items()}
    return {
        "indexed_benign_lines_per_s": round(median["indexed"]),
        "every_rule_benign_lines_per_s": round(median["every_rule"]),
        "ratio": round(median["indexed"] / median["every_rule"], 3),
    }


def speed(
    excerpts: Sequence[Excerpt], benign: Sequence[str], seconds: float, *, baseline_rules: Path | None = None
) -> dict[str, Any]:
    """Benign lines/s of the matcher (and of the detector's pre-filter). With `baseline_rules`, that rules file
    (e.g. the one of an earlier commit) is timed in the same process on the same lines, the two interleaved
    over five rounds, median of each: the only comparison the machine's load does not distort."""
    matcher = default_matcher()
    baseline = Matcher(load_knowledge_base(baseline_rules)) if baseline_rules is not None else None
    quiet = list(benign)
    for excerpt in excerpts:
        quiet.extend(
            line
            for line in excerpt.lines
            if matcher.match_line(line) is None and (baseline is None or baseline.match_line(line) is None)
        )
    every = [line for e in excerpts for line in e.lines]
    out: dict[str, Any] = {
        "benign_lines": len(quiet),
        "matcher_benign_lines_per_s": round(_rate(matcher.match_line, quiet, seconds)),
        "matcher_all_corpus_lines_per_s": round(_rate(matcher.match_line, every, seconds)),
        "detector_prefilter_benign_lines_per_s": round(_rate(classify_line, quiet, seconds)),
        # whole-excerpt scans (what the service runs): with the unwrapping step vs line by line without it
        **_scan_rates(matcher, [list(e.lines) for e in excerpts] + [list(benign)], seconds),
        "benign_lines_matched": sum(matcher.match_line(line) is not None for line in benign),
        "detector_prefilter_benign_hits": sum(classify_line(line) is not None for line in benign),
        "rule_dispatch": _dispatch_rates(matcher, quiet, seconds),
    }
    if baseline is not None:
        rounds: dict[str, list[float]] = {"baseline": [], "current": []}
        for _ in range(5):
            rounds["baseline"].append(_rate(baseline.match_line, quiet, seconds / 5))
            rounds["current"].append(_rate(matcher.match_line, quiet, seconds / 5))
        median = {k: sorted(v)[len(v) // 2] for k, v in rounds.items()}
        out["same_run"] = {
            "baseline_rules": baseline_rules.name if baseline_rules is not None else None,
            "baseline_rules_count": len(baseline.kb.rules),
            "current_rules_count": len(matcher.kb.rules),
            "baseline_benign_lines_per_s": round(median["baseline"]),
            "current_benign_lines_per_s": round(median["current"]),
            "ratio": round(median["current"] / median["baseline"], 3),
            "baseline_benign_lines_matched": sum(baseline.match_line(line) is not None for line in benign),
        }
    return out


_SAME_BUG_SETS = (
    "syzbot_fix_same_bug",
    "syzbot_dup_same_bug",
    "syzbot_xfn_same_bug",
    "tracker_same_bug",
)


def bucket_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per same-bug set: reports, identified reports and pairwise P / R / F1 of both bucket levels."""

    def prf(scores: dict[str, Any]) -> dict[str, Any]:
        return {k: scores[k] for k in ("true_pairs", "tp", "fp", "fn", "precision", "recall", "f1")}

    out: dict[str, Any] = {}
    for name in _SAME_BUG_SETS:
        every = result[name].get("all")
        if not every or not every["crashes"]:
            continue
        out[name] = {
            "reports": every["crashes"],
            "identified": every["crashes"] - every["without_identity"],
            "bugs": every["bugs"],
            "level1_exact_key": prf(every["exact_key"]),
            "level2_similarity": prf(every["similarity"]),
            "over_every_report": {
                "level1_exact_key": prf(every["over_every_report"]["exact_key"]),
                "level2_similarity": prf(every["over_every_report"]["similarity"]),
            },
            "across_halves_false_pairs": every["across_halves_false_pairs"],
            "halves": {
                half: {
                    "reports": scores["crashes"],
                    "bugs": scores["bugs"],
                    "level1_exact_key": prf(scores["exact_key"]),
                    "level2_similarity": prf(scores["similarity"]),
                    "over_every_report": {
                        "level1_exact_key": prf(scores["over_every_report"]["exact_key"]),
                        "level2_similarity": prf(scores["over_every_report"]["similarity"]),
                    },
                }
                for half, scores in result[name]["halves"].items()
            },
        }
    for name in ("bucketing", "partial_copies"):
        out[name] = {
            "reports": result[name]["reports"],
            "level1_exact_key": prf(result[name]["exact_key"]),
            "level2_similarity": prf(result[name]["similarity"]),
        }
    copies = result["partial_copies"]
    out["partial_copies"]["across_halves_false_pairs"] = copies["across_halves_false_pairs"]
    out["partial_copies"]["halves"] = {
        half: {
            "reports": scores["reports"],
            "bugs": scores["bugs"],
            "level1_exact_key": prf(scores["exact_key"]),
            "level2_similarity": prf(scores["similarity"]),
        }
        for half, scores in copies["halves"].items()
    }
    return out


def run_bench(corpus_dir: Path, *, seconds: float = 2.0, baseline_rules: Path | None = None) -> dict[str, Any]:
    result = _run_bench(corpus_dir, seconds=seconds, baseline_rules=baseline_rules)
    result["buckets"] = bucket_summary(result)
    return result


def _run_bench(corpus_dir: Path, *, seconds: float, baseline_rules: Path | None) -> dict[str, Any]:
    excerpts, benign = load_corpus(corpus_dir)
    corpus = [e for e in excerpts if e.split != "samples"]
    return {
        "bench": "kb",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "corpus": {
            "excerpts": len(corpus),
            "samples": len(excerpts) - len(corpus),
            "sources": len({e.source for e in corpus}),
            "locales": dict(Counter(str(e.meta.get("locale")) for e in corpus)),
            "benign_lines": len(benign),
        },
        "classification": classification(excerpts),
        "bucketing": bucketing(excerpts),
        "partial_copies": partial_copy_robustness(excerpts),
        "syzbot_fix_same_bug": syzbot_bucketing(load_syzbot(corpus_dir, "syzbot_fix_same_bug.jsonl")),
        "syzbot_dup_same_bug": syzbot_bucketing(load_syzbot(corpus_dir, "syzbot_dup_same_bug.jsonl")),
        "syzbot_xfn_same_bug": syzbot_bucketing(load_syzbot(corpus_dir, "syzbot_xfn_same_bug.jsonl")),
        "tracker_same_bug": syzbot_bucketing(load_syzbot(corpus_dir, "tracker_same_bug.jsonl")),
        "speed": speed(excerpts, benign, seconds, baseline_rules=baseline_rules),
    }
