"""Matching log lines against the knowledge base: one finding per line that holds a known signature.

Speed matters (the service sees every kernel line of every faulty node): one combined regex of all the
rules' pre-filter literals rejects benign lines in a single scan; a line that holds a literal is scanned once
more for every literal it holds, and only the rules indexed under those literals are tried (before, every
rule's literals were tested on such a line: ~50 µs a line with 103 rules). Pure: no I/O, no transport.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nodeheal.diagnoser.kb.loader import Block, KnowledgeBase, KnowledgeBaseError, Rule, Run
from nodeheal.diagnoser.kb.logline import line_time, rejoined
from nodeheal.schemas.kernel import LOOKBACK_CLASSES, Category

IO_ERROR_CLASSES: frozenset[str] = frozenset({"nvme_disk_io_error"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One line the knowledge base recognised."""

    index: int  # position of the line in its input (0-based)
    line: str
    cls: str
    category: Category
    rule_id: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str | None:
        return self.fields.get("device")


def literal_trie_pattern(literals: Iterable[str]) -> str:
    """One regex matching any of `literals`, factored as a prefix tree ("ab|ac" → "a(?:b|c)").

    Python's `re` tries alternatives one by one at every position; sharing prefixes makes a benign line
    fail after one or two characters per position instead of once per literal.
    """
    trie: dict[str, Any] = {}
    for literal in literals:
        node = trie
        for char in literal:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends:
            return "(?:" + body + ")?"
        return body

    return build(trie)


class Matcher:
    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        literals = sorted({c.lower() for r in kb.rules for c in r.contains})
        # matched against the lower-cased line: a case-sensitive pattern is ~5x faster than IGNORECASE
        trie = literal_trie_pattern(literals)
        self._any_literal = re.compile(trie)
        # which literals a line holds, in one more scan: at each position the trie finds the longest literal
        # starting there, and every literal starting there is a prefix of it (overlaps included)
        self._each_literal = re.compile(f"(?=({trie}))")
        self._prefixes = {lit: tuple(p for p in literals if lit.startswith(p)) for lit in literals}
        # the rules a literal can admit, in knowledge-base order (ties of rank go to the earlier rule)
        self._order = {rule.id: i for i, rule in enumerate(kb.rules)}
        by_literal: dict[str, list[Rule]] = {}
        for rule in kb.rules:
            for needle in {c.lower() for c in rule.contains}:
                by_literal.setdefault(needle, []).append(rule)
        self._by_literal = {k: tuple(v) for k, v in by_literal.items()}
        self._vetoes = {r.id: (r.veto, r.veto_after) for r in kb.rules if r.veto is not None}
        for kind, entries, find in (("run", kb.runs, self.run_finding), ("block", kb.blocks, self.block_finding)):
            for entry in entries:
                for example in entry.examples:
                    if find(entry, example) is None:  # type: ignore[arg-type]
                        raise KnowledgeBaseError(
                            f"knowledge base {kind} {entry.id!r} does not find its own example {list(example)!r}"
                        )
                for counter in entry.counter_examples:
                    if find(entry, counter) is not None:  # type: ignore[arg-type]
                        raise KnowledgeBaseError(
                            f"knowledge base {kind} {entry.id!r} finds its counter-example {list(counter)!r}"
                        )

    def candidates(self, lowered: str) -> tuple[list[Rule], list[Rule]]:
        """The specific and the fallback rules one of whose literals the lower-cased line holds, in
        knowledge-base order (a case-sensitive rule's literal is checked again on the line itself)."""
        found: set[str] = set()
        for match in self._each_literal.finditer(lowered):
            found.update(self._prefixes[match.group(1)])
        rules: dict[str, Rule] = {}
        for literal in found:
            for rule in self._by_literal[literal]:
                rules[rule.id] = rule
        ordered = sorted(rules.values(), key=lambda r: self._order[r.id])
        return [r for r in ordered if not r.fallback], [r for r in ordered if r.fallback]

    def _first(self, rules: Sequence[Rule], line: str, lowered: str) -> tuple[Rule, re.Match[str]] | None:
        best: tuple[Rule, re.Match[str]] | None = None
        for rule in rules:
            if not rule.prefilter_hit(line, lowered):
                continue
            match = rule.regex.search(line)
            if match is None:
                continue
            if best is None or self.kb.rank(rule.cls) > self.kb.rank(best[0].cls):
                best = (rule, match)
        return best

    def match_line(self, line: str, *, index: int = 0) -> Finding | None:
        """The most decisive rule that matches the line (specific rules before fallbacks), or None."""
        lowered = line.lower()
        if not self._any_literal.search(lowered):
            return None
        specific, fallback = self.candidates(lowered)
        hit = self._first(specific, line, lowered) or self._first(fallback, line, lowered)
        if hit is None:
            return None
        rule, match = hit
        fields = {k: v for k, v in match.groupdict().items() if v is not None}
        return Finding(index=index, line=line, cls=rule.cls, category=rule.category, rule_id=rule.id, fields=fields)

    def scan(self, lines: Iterable[str]) -> list[Finding]:
        """Findings in input order, with the look-back categories of ext4/xfs resolved.

        A line that matches nothing on its own is tried once more with the lines a mailer or web page
        wrapped off it rejoined (`logline.rejoined`); its finding then carries the rejoined text.
        """
        raw = list(lines)
        findings: list[Finding] = []
        for i, line in enumerate(raw):
            finding = self.match_line(line, index=i)
            if finding is None and i + 1 < len(raw) and (joined := rejoined(raw, i)) is not None:
                finding = self.match_line(joined, index=i)
            if finding is not None:
                findings.append(finding)
        if self._vetoes:
            findings = [f for f in findings if not self._vetoed(f, raw)]
        taken = {f.index for f in findings}
        for run in self.kb.runs:
            found = self.run_finding(run, raw)
            if found is not None and found.index not in taken:
                findings.append(found)
                taken.add(found.index)
        for block in self.kb.blocks:
            found = self.block_finding(block, raw)
            if found is not None and found.index not in taken:
                findings.append(found)
                taken.add(found.index)
        findings.sort(key=lambda f: f.index)
        return resolve_lookback(findings)

    def _vetoed(self, finding: Finding, lines: Sequence[str]) -> bool:
        """A finding of a rule with a `veto` regex, in an excerpt holding a line it matches — with `veto_after`, a line
        after the finding's own (rules.yaml header)."""
        entry = self._vetoes.get(finding.rule_id)
        if entry is None:
            return False
        veto, after = entry
        tried = lines[finding.index + 1 :] if after else lines
        return any(veto.search(line) for line in tried)

    @staticmethod
    def run_finding(run: Run, lines: Sequence[str]) -> Finding | None:
        """The run's finding in an excerpt (loader.Run): on the line that completes the first set of
        `min_items` distinct items stopped within `window_s` seconds, none started again later, when no
        line of the excerpt is a `veto` line; None otherwise. Lines matching `skip` are ignored. A console
        copy's colour codes (`_SGR`) are read past, in the items and in the veto alike."""
        stops: list[tuple[int, str, tuple[str, float] | None]] = []
        started_last: dict[str, int] = {}
        screen = run.screen.search
        text = [_SGR.sub("", line) if "[0" in line else line for line in lines]
        for i, line in enumerate(text):
            if screen(line) is None:
                continue
            if run.skip is not None and run.skip.search(line):
                continue
            for item in run.items:
                if item.stop.search(line):
                    stops.append((i, item.key, line_time(line)))
                    break
                if item.start.search(line):
                    started_last[item.key] = i
                    break
        live = [s for s in stops if started_last.get(s[1], -1) < s[0]]
        for end, (index, _, end_at) in enumerate(live):
            keys: set[str] = set()
            for _, key, at in live[: end + 1]:
                if at is None or end_at is None or at[0] != end_at[0] or _within(at[1], end_at[1], run.window_s, at[0]):
                    keys.add(key)
            if len(keys) >= run.min_items:
                if run.veto is not None and any(run.veto.search(line) for line in text):
                    return None
                return Finding(
                    index=index,
                    line=lines[index],
                    cls=run.cls,
                    category=run.category,
                    rule_id=run.id,
                    fields={"items": ", ".join(sorted(keys))},
                )
        return None

    @staticmethod
    def block_finding(block: Block, lines: Sequence[str]) -> Finding | None:
        """The block's first finding in an excerpt (loader.Block): a line its regex matches, under a header line at
        most `within` lines above it with only `between` lines in between. The finding's text is the header and the
        line joined (the header names the unit the line is about)."""
        for i, line in enumerate(lines):
            if not any(literal in line for literal in block.contains):
                continue
            match = block.regex.search(line)
            if match is None:
                continue
            for j in range(i - 1, max(-1, i - 1 - block.within), -1):
                head = block.header.search(lines[j])
                if head is not None:
                    fields = {k: v for k, v in (head.groupdict() | match.groupdict()).items() if v is not None}
                    text = f"{lines[j].strip()} {line.strip()}"
                    return Finding(
                        index=i, line=text, cls=block.cls, category=block.category, rule_id=block.id, fields=fields
                    )
                if block.between.search(lines[j]) is None:
                    break
        return None

    def primary(self, findings: Sequence[Finding]) -> Finding | None:
        """The finding whose class is the most decisive statement about the excerpt (highest rank, earliest)."""
        if not findings:
            return None
        return max(findings, key=lambda f: (self.kb.rank(f.cls), -f.index))


# systemd's console status colours (its ANSI_GREEN "\x1B[0;32m", ANSI_HIGHLIGHT "\x1B[0;1;39m", ANSI_NORMAL "\x1B[0m",
# …: every one starts with "0"), with or without the ESC byte a web page or a copy drops
_SGR = re.compile(r"\x1b?\[0(?:;\d+)*m")


def _within(earlier: float, later: float, window: float, kind: str) -> bool:
    """Is `later` at most `window` seconds after `earlier` (a wall clock wraps at midnight)?"""
    gap = later - earlier
    if kind == "clock":
        gap %= 86400.0
    return 0.0 <= gap <= window


_PARTITION = (
    re.compile(r"^(nvme\d+)(?:n\d+(?:p\d+)?)?$"),
    re.compile(r"^(mmcblk\d+)(?:p\d+)?$"),
    re.compile(r"^((?:s|h|v|xv)d[a-z]+)\d*$"),
)
_STACKED = re.compile(r"^(?:dm-\d+|md\d+|loop\d+|nbd\d+|rbd\d+|mapper/.*)")


def base_disk(device: str) -> str:
    """`nvme0n1p2` → `nvme0`, `sda1` → `sda`, `mmcblk0p2` → `mmcblk0`; other names unchanged."""
    name = device.removeprefix("/dev/")
    for pattern in _PARTITION:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return name


def same_disk(fs_device: str | None, io_device: str | None) -> bool:
    """Could I/O errors on `io_device` explain filesystem errors on `fs_device`?

    Unknown devices and stacked devices (device-mapper, md, loop, nbd) cannot be mapped to their
    physical disk from the log alone, so any I/O error counts for them.
    """
    if fs_device is None or io_device is None:
        return True
    if _STACKED.match(fs_device.removeprefix("/dev/")) or _STACKED.match(io_device.removeprefix("/dev/")):
        return True
    return base_disk(fs_device) == base_disk(io_device)


def resolve_lookback(findings: Sequence[Finding]) -> list[Finding]:
    """ext4/xfs findings become `hardware` when device I/O errors on the same disk come before them."""
    out: list[Finding] = []
    io_devices: list[str | None] = []
    for finding in findings:
        if finding.cls in IO_ERROR_CLASSES:
            io_devices.append(finding.device)
        elif finding.cls in LOOKBACK_CLASSES and any(same_disk(finding.device, dev) for dev in io_devices):
            finding = replace(finding, category="hardware")
        out.append(finding)
    return out
