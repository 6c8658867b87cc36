"""`nodeheal audit tail`: read (and follow) the remediation audit stream.

Read-only: a named ephemeral pull consumer by default (deleted when the command ends), or a named durable
with `--durable` so a subscriber resumes where it stopped. It never publishes and never acts.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import UTC, datetime

import click
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from nodeheal.cli.common import (
    ConnectionNotes,
    NatsAuth,
    nats_auth_options,
    nats_url_option,
    run,
    stop_on_signals,
)
from nodeheal.cli.window import StoredMessage, parse_time, read_durable, read_stream
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.subjects import DEFAULT_PREFIX, escape_token


def audit_filter(*, prefix: str, cluster: str | None, node: str | None) -> str:
    """The subject filter for one node, one cluster or everything: `<prefix>.audit.<cluster|*>.<node|*>`."""
    c = escape_token(cluster) if cluster else "*"
    n = escape_token(node) if node else "*"
    return f"{prefix}.audit.{c}.{n}"


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_record(record: RemediationRecord) -> str:
    """One line a person reads: time, node, action, phase, dry-run flag, action id, reason."""
    dry = " DRY-RUN" if record.dry_run else ""
    target = f"({record.target})" if record.target else ""
    error = f"  error: {record.error}" if record.error else ""
    return (
        f"{_ts(record.time)}  {record.cluster}/{record.node}  {record.action}{target}  {record.phase}{dry}"
        f"  {record.action_id}  {record.reason}{error}"
    )


def record_json(record: RemediationRecord, stored: StoredMessage) -> str:
    body = record.to_dict()
    body["_stream_seq"] = stored.seq
    return json.dumps(body, sort_keys=True, ensure_ascii=False)


@click.group()
def audit() -> None:
    """The remediation audit stream: every decision of the remediator, the intent before the action."""


@audit.command("tail")
@nats_url_option
@nats_auth_options
@click.option("--node", default=None, help="Only this node (Kubernetes node name).")
@click.option("--cluster", default=None, help="Only this cluster.")
@click.option(
    "--since",
    default=None,
    help="Start here: ISO time (2026-03-01T12:00:00Z; UTC if no zone) or a duration back from now (15m, 2h, 7d). "
    "Default: the whole stream.",
)
@click.option("--follow", "-f", is_flag=True, default=False, help="Keep printing new records until interrupted.")
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON object per line (the record as stored).")
@click.option(
    "--durable",
    default=None,
    help="Use (and create) this named durable consumer: the next run resumes after what this one printed.",
)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Subject prefix.")
@click.option("--stream-prefix", default="", help="Prefix of stream names (side-by-side installs).")
@click.option("--bucket-prefix", default="nodeheal", show_default=True, help="Prefix of bucket names.")
def tail(
    nats_url: str | None,
    nats_auth: NatsAuth,
    node: str | None,
    cluster: str | None,
    since: str | None,
    follow: bool,
    as_json: bool,
    durable: str | None,
    prefix: str,
    stream_prefix: str,
    bucket_prefix: str,
) -> None:
    """Print the audit records (oldest first), one line each; stop at the end of the stream unless --follow."""
    if not nats_url:
        raise click.UsageError("no NATS server: pass --nats-url nats://HOST:4222 or set NATS_URL")
    try:
        start = parse_time(since, now=datetime.now(tz=UTC)) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    settings = nats_auth.settings(url=nats_url, prefix=prefix, stream_prefix=stream_prefix, bucket_prefix=bucket_prefix)
    stream = settings.topology().stream(f"{stream_prefix}AUDIT").name
    subject = audit_filter(prefix=prefix, cluster=cluster, node=node)

    stdout_closed = False
    notes = ConnectionNotes(nats_auth, tool="audit tail")

    async def body() -> int:
        nonlocal stdout_closed
        nc = await notes.connect(settings, name="nodeheal-audit-tail")
        js = nc.jetstream()
        count = 0
        try:
            source = (
                read_durable(js, stream=stream, durable=durable, subjects=[subject], since=start, follow=follow)
                if durable
                else read_stream(js, stream=stream, subjects=[subject], since=start, follow=follow)
            )
            # closed before the connection: a durable read gives back what it fetched and did not hand on.
            # SIGTERM / SIGHUP end it as Ctrl-C does, with what it printed acknowledged
            async with stop_on_signals(), contextlib.aclosing(source) as records:
                async for stored in records:
                    try:
                        record = RemediationRecord.model_validate_json(stored.data)
                    except ValidationError as exc:
                        click.echo(
                            f"skipping {stream} seq {stored.seq} on {stored.subject}: not a RemediationRecord "
                            f"({exc.error_count()} errors, first: {exc.errors()[0]['msg']})",
                            err=True,
                        )
                        continue
                    try:
                        click.echo(record_json(record, stored) if as_json else format_record(record))
                    except BrokenPipeError as exc:  # `| head`: the reader is gone, nothing more to print
                        stdout_closed = True
                        with contextlib.suppress(BrokenPipeError):
                            await records.athrow(exc)  # a durable gives this record back: it was not printed
                        break
                    count += 1
        finally:
            await nc.close()
        return count

    try:
        count = run(body)
    except KeyboardInterrupt:
        return
    except NotFoundError as exc:
        raise click.ClickException(
            f"stream {stream} not found on {nats_url}: run `nodeheal streams apply` with the same "
            "--prefix/--stream-prefix, or pass the prefixes your installation uses"
        ) from exc
    except Exception as exc:
        raise click.ClickException(f"audit tail of {stream} on {nats_url} failed: {notes.explain(exc)}") from exc
    if stdout_closed:
        # what is left in stdout's buffer goes nowhere, so the flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if not as_json:
        click.echo(f"{count} audit records", err=True)
