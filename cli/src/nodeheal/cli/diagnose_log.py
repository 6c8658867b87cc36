"""`nodeheal diagnose-log FILE`: what the knowledge base finds in a kernel / journal log.

Works on dmesg (with or without timestamps), journal / syslog (`kernel:` prefixes) and crash(8) `sys`
output. One JSON object per finding on stdout; unreadable input is a clear message on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from nodeheal.diagnoser.kb import KnowledgeBaseError, Matcher, analyse, load_knowledge_base
from nodeheal.diagnoser.kb.signature import CrashReport, cluster_reports, extract_reports


def _read(file: str) -> list[str]:
    if file == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        path = Path(file)
        where = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise click.ClickException(f"cannot read {where}: no such file; pass a log file path or '-'") from exc
        except IsADirectoryError as exc:
            raise click.ClickException(f"cannot read {where}: it is a directory; pass a log file") from exc
        except OSError as exc:
            raise click.ClickException(f"cannot read {where}: {exc.strerror}") from exc
    if b"\x00" in data[:4096]:
        msg = f"{where} looks binary (NUL bytes); pass a text log (dmesg, journalctl, crash 'sys' output)"
        raise click.ClickException(msg)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.splitlines()


def _member(report: CrashReport) -> dict[str, object]:
    """One report of a bucket: where it starts, its exact key and what the key was cut from."""
    entry: dict[str, object] = {"line_no": report.start + 1, "bucket": report.bucket(), "kind": report.kind}
    listed = (
        ("subkind", report.subkind),
        ("access", report.access),
        ("assertion", report.assertion),
        ("culprit", report.culprit),
        ("blamed", report.guilty()),
    )
    for name, value in listed:
        if value:
            entry[name] = value
    return entry


@click.command("diagnose-log")
@click.argument("file", metavar="FILE")
@click.option("--rules", "rules_path", default=None, help="A rules file to use instead of the shipped knowledge base.")
@click.option("--summary", is_flag=True, default=False, help="Also print the primary class of the whole excerpt.")
@click.option(
    "--buckets",
    is_flag=True,
    default=False,
    help="Also print each crash bucket with its members (the reports of this log that share it), also for crash "
    "reports that are no finding (a KASAN report, a WARNING).",
)
def diagnose_log(file: str, rules_path: str | None, summary: bool, buckets: bool) -> None:
    """Print what the knowledge base finds in a kernel / journal log FILE ('-' for stdin).

    One JSON object per finding: class, category, line, line_no, rule, fields and, for lines of a
    crash report, its signature (kind, bucket, panic_string, rip_func, module, top_frames, bug_at,
    taint, kernel_release). Exit 0 with no output when nothing is found; exit 2 on unreadable input.
    """
    try:
        matcher = Matcher(load_knowledge_base(rules_path)) if rules_path else None
    except KnowledgeBaseError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        lines = _read(file)
    except click.ClickException as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    result = analyse(lines, matcher=matcher)
    for finding in result.findings:
        entry: dict[str, object] = {
            "class": finding.cls,
            "category": finding.category,
            "line": finding.line,
            "line_no": finding.index + 1,
            "rule": finding.rule_id,
        }
        if finding.fields:
            entry["fields"] = finding.fields
        signature = result.signature_of(finding)
        if signature is not None:
            entry["signature"] = signature.model_dump(mode="json", exclude_none=True)
        click.echo(json.dumps(entry, ensure_ascii=False))
    # the crash reports are cut for findings; --buckets asks for them anyway (a KASAN report or a WARNING is no
    # finding of the knowledge base, but it is a crash report with an identity)
    reports = (result.reports or tuple(extract_reports(lines))) if buckets else ()
    if reports:
        clusters = cluster_reports(reports)
        by_cluster: dict[int, list[int]] = {}
        for position, cluster in enumerate(clusters):
            by_cluster.setdefault(cluster, []).append(position)
        for positions in by_cluster.values():
            members = [reports[p] for p in positions]
            first = members[0].signature()
            click.echo(
                json.dumps(
                    {
                        "bucket": first.bucket,
                        "kind": first.kind,
                        "exact_buckets": sorted({m.bucket() for m in members}),
                        "members": [_member(m) for m in members],
                        "identified": any(m.identified() for m in members),
                    }
                )
            )
    if summary and result.primary is not None:
        primary = result.primary
        click.echo(
            json.dumps({"primary_class": primary.cls, "category": primary.category, "line_no": primary.index + 1})
        )
