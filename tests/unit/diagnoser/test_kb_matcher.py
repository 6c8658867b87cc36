"""The matcher's rule dispatch: a line that passes the pre-filter is tried only against the rules indexed under
the literals it holds (`Matcher.candidates`), not against every rule. It must admit exactly the rules one of
whose literals the line holds — overlapping literals, one inside another, one the prefix of another — and so
give the same findings as trying every rule, on every real line the repository holds."""

from __future__ import annotations

import json
import random
from pathlib import Path

from nodeheal.diagnoser.kb import Matcher, default_matcher
from nodeheal.diagnoser.kb.loader import Rule

DATA = Path(__file__).resolve().parents[2] / "data"


class EveryRule(Matcher):
    """The dispatch before the literal index: every rule is tried on a pre-filter hit."""

    def candidates(self, lowered: str) -> tuple[list[Rule], list[Rule]]:
        rules = self.kb.rules
        return [r for r in rules if not r.fallback], [r for r in rules if r.fallback]


def holding(matcher: Matcher, lowered: str) -> set[str]:
    return {r.id for r in matcher.kb.rules if any(c.lower() in lowered for c in r.contains)}


def every_real_line() -> list[str]:
    lines: list[str] = (DATA / "kb" / "benign.txt").read_text(encoding="utf-8").splitlines()
    for path in sorted(DATA.rglob("*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            if text.strip():
                lines.extend(x for x in json.loads(text).get("lines", []) if isinstance(x, str))
    return lines


def test_a_line_admits_exactly_the_rules_whose_literals_it_holds() -> None:
    matcher = default_matcher()
    literals = sorted({c.lower() for r in matcher.kb.rules for c in r.contains})
    # literals inside and around each other: every pair glued, each literal with its own prefixes and suffixes
    lines = [a + b for a in literals for b in literals[::7]]
    lines += [lit[:i] + lit for lit in literals for i in range(1, len(lit))][::5]
    rng = random.Random(18)
    lines += [" ".join(rng.sample(literals, 3)) for _ in range(2000)]
    overlapping = 0
    for line in lines:
        specific, fallback = matcher.candidates(line)
        admitted = [r.id for r in specific + fallback]
        assert sorted(admitted) == sorted(holding(matcher, line)), line
        order = {r.id: i for i, r in enumerate(matcher.kb.rules)}
        assert [order[r.id] for r in specific] == sorted(order[r.id] for r in specific)
        found = {lit for lit in literals if lit in line}
        overlapping += any(a != b and a in b for a in found for b in found)
    assert overlapping > 100  # the lines do exercise literals inside literals


def test_the_index_finds_what_trying_every_rule_finds_on_every_real_line() -> None:
    matcher = default_matcher()
    every = EveryRule(matcher.kb)
    lines = every_real_line()
    lines += [example for rule in matcher.kb.rules for example in rule.examples]
    lines += [line.upper() for line in lines] + [line.lower() for line in lines]  # case-sensitive rules
    assert len(lines) > 10_000
    found = 0
    for line in lines:
        expected = every.match_line(line)
        assert matcher.match_line(line) == expected, line
        found += expected is not None
    assert found > 1_000
