"""The diagnoser's knowledge base: log signatures as data, the matcher, and crash signatures.

`analyse(lines)` is what the CLI (`nodeheal diagnose-log`) and the service share: the findings of a log
excerpt, each with the crash signature of the report it belongs to when there is one. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from nodeheal.diagnoser.kb.loader import KnowledgeBase, KnowledgeBaseError, load_knowledge_base, parse_knowledge_base
from nodeheal.diagnoser.kb.matcher import Finding, Matcher, base_disk, resolve_lookback, same_disk
from nodeheal.diagnoser.kb.signature import CrashReport, extract_reports
from nodeheal.schemas.diagnosis import CrashSignature


@dataclass(frozen=True, slots=True)
class Analysis:
    findings: tuple[Finding, ...]
    signatures: dict[int, CrashSignature]  # finding index (line index) → signature of its crash report
    reports: tuple[CrashReport, ...]
    primary: Finding | None

    def signature_of(self, finding: Finding) -> CrashSignature | None:
        return self.signatures.get(finding.index)


@lru_cache(maxsize=1)
def default_matcher() -> Matcher:
    return Matcher(load_knowledge_base())


def analyse(lines: Sequence[str], *, matcher: Matcher | None = None) -> Analysis:
    """Findings of a log excerpt, with crash signatures joined to the lines of their report."""
    active = matcher or default_matcher()
    findings = active.scan(lines)
    reports = extract_reports(lines) if findings else []
    signatures: dict[int, CrashSignature] = {}
    for report in reports:
        signature = report.signature()
        for index in report.line_indices:
            signatures[index] = signature
    return Analysis(
        findings=tuple(findings),
        signatures={f.index: signatures[f.index] for f in findings if f.index in signatures},
        reports=tuple(reports),
        primary=active.primary(findings),
    )


__all__ = [
    "Analysis",
    "CrashReport",
    "Finding",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "Matcher",
    "analyse",
    "base_disk",
    "default_matcher",
    "extract_reports",
    "load_knowledge_base",
    "parse_knowledge_base",
    "resolve_lookback",
    "same_disk",
]
