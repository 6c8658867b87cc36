"""`nodeheal approve ACTION_ID`, `nodeheal pause`, `nodeheal resume`: people steering the remediator
through the `nodeheal-control` bucket (the remediator reads it before every step).

`approve` first reads AUDIT: an action is waiting for approval while its last record is `awaiting_approval`
(written by the remediator's ladder just before it polls `approval.<action_id>`); any other id is refused.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import click
import nats.errors
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from nodeheal.cli.common import ConnectionNotes, NatsAuth, nats_auth_options, nats_url_option, run
from nodeheal.cli.window import read_stream
from nodeheal.remediator.control import (
    PauseState,
    approval_key,
    is_approved,
    read_pause,
    write_approval,
    write_pause,
)
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.subjects import DEFAULT_PREFIX, audit_subject

T = TypeVar("T")

bucket_prefix_option = click.option(
    "--bucket-prefix", default="nodeheal", show_default=True, help="Prefix of the key-value bucket names."
)
by_option = click.option("--by", default=None, help="Who is deciding (default: the login name); goes to the audit.")


def _notes(auth: NatsAuth, tool: str) -> ConnectionNotes:
    """The connection's notes for a command that writes the control bucket: a permission refusal ends the request
    at once (`ConnectionNotes.until_refused`; before, each refused request waited out its 5 s timeout) and is said
    in the command's one-line error (`_refused`), not on a line of its own."""
    return ConnectionNotes(auth, tool=tool, resumes="a request it cuts fails: run the command again", say_refusal=False)


async def _control(url: str, bucket_prefix: str, auth: NatsAuth, notes: ConnectionNotes) -> tuple[Client, KeyValue]:
    nc = await notes.connect(auth.settings(url=url, bucket_prefix=bucket_prefix), name="nodeheal-cli")
    try:
        kv = await notes.until_refused(nc.jetstream().key_value(f"{bucket_prefix}-control"))
    except Exception as exc:
        await nc.close()
        if notes.denied:
            raise _refused(notes, auth, what=f"read the {bucket_prefix}-control bucket", needs="pausing") from exc
        msg = f"bucket {bucket_prefix}-control not found ({exc}); run `nodeheal streams apply` first"
        raise click.ClickException(msg) from exc
    return nc, kv


async def _switch(
    url: str,
    bucket_prefix: str,
    auth: NatsAuth,
    change: Callable[[KeyValue], Awaitable[T]],
    *,
    what: str,
    tool: str,
) -> T:
    """Run `change` on the control bucket; a permission refusal is one line naming the credential, no traceback."""
    notes = _notes(auth, tool)
    nc, kv = await _control(url, bucket_prefix, auth, notes)
    try:
        return await notes.until_refused(change(kv))
    except (nats.errors.TimeoutError, TimeoutError, PermissionError) as exc:
        if notes.denied:
            raise _refused(notes, auth, what=what, needs="pausing or resuming") from exc
        raise
    finally:
        await nc.close()


def _refused(notes: ConnectionNotes, auth: NatsAuth, *, what: str, needs: str = "approving") -> click.ClickException:
    creds = f"the credential {auth.creds_file}" if auth.creds_file else "no credential (--creds / $NATS_CREDS)"
    keys = "approval.* keys" if needs == "approving" else "pause key"
    return click.ClickException(
        f"the NATS server refused to let this user {what} ({notes.denied[-1]}); you connected with {creds}. "
        f"{needs.capitalize()} needs a user that may write the control bucket's {keys}: the admin credential "
        "(deploy/nats/natsauth.py writes admin.creds; pass --creds admin.creds or set NATS_CREDS)"
    )


async def last_record_of(
    js: JetStreamContext,
    *,
    stream: str,
    prefix: str,
    action_id: str,
    look_back: timedelta,
    node: tuple[str, str] | None = None,
) -> RemediationRecord | None:
    """The last AUDIT record of `action_id` stored within `look_back` (None: none there). Bounded: AUDIT keeps a
    year, and a ladder waits for an approval `APPROVAL_TIMEOUT_S` (1 h by default) before it escalates. With
    `node` (cluster, node) only that node's subject is read: the whole fleet's last day of AUDIT is not."""
    needle = action_id.encode()
    last: RemediationRecord | None = None
    since = datetime.now(tz=UTC) - look_back
    subjects = [audit_subject(*node, prefix=prefix)] if node else [f"{prefix}.audit.>"]
    source = read_stream(js, stream=stream, subjects=subjects, since=since)
    async with contextlib.aclosing(source) as records:
        async for stored in records:
            if needle not in stored.data:  # most records are another action's: no parse
                continue
            try:
                record = RemediationRecord.model_validate_json(stored.data)
            except ValidationError:
                continue
            if record.action_id == action_id:
                last = record
    return last


def _url(nats_url: str | None) -> str:
    if not nats_url:
        msg = "no NATS server: pass --nats-url nats://HOST:4222 or set NATS_URL"
        raise click.UsageError(msg)
    return nats_url


@click.command("approve")
@click.argument("action_id")
@click.option("--note", default="", help="Why (kept with the approval).")
@nats_url_option
@nats_auth_options
@bucket_prefix_option
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Subject prefix.")
@click.option("--stream-prefix", default="", help="Prefix of stream names (side-by-side installs).")
@click.option(
    "--look-back-h",
    default=24.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="How far back AUDIT is read for the action's records (more than the remediator's APPROVAL_TIMEOUT_S).",
)
@click.option(
    "--node",
    "node_ref",
    default=None,
    metavar="CLUSTER/NODE",
    help="The node of the action (the awaiting_approval record's command names it): only its AUDIT records are "
    "read, not the whole fleet's.",
)
@by_option
def approve(
    action_id: str,
    note: str,
    nats_url: str | None,
    nats_auth: NatsAuth,
    bucket_prefix: str,
    prefix: str,
    stream_prefix: str,
    look_back_h: float,
    node_ref: str | None,
    by: str | None,
) -> None:
    """Approve one action waiting in `awaiting_approval` (its id is in the audit record)."""
    if not action_id.startswith("act-"):
        msg = f"{action_id!r} is not an action id; copy it from an awaiting_approval record (it starts with 'act-')"
        raise click.BadParameter(msg, param_hint="ACTION_ID")
    node: tuple[str, str] | None = None
    if node_ref is not None:
        cluster, _, name = node_ref.partition("/")
        if not cluster or not name:
            msg = f"{node_ref!r} is not CLUSTER/NODE; copy it from the awaiting_approval record's command"
            raise click.BadParameter(msg, param_hint="--node")
        node = (cluster, name)
    who = by or getpass.getuser()
    settings = nats_auth.settings(
        url=_url(nats_url), prefix=prefix, stream_prefix=stream_prefix, bucket_prefix=bucket_prefix
    )
    stream = settings.topology().stream(f"{stream_prefix}AUDIT").name
    bucket = f"{bucket_prefix}-control"
    notes = _notes(nats_auth, "approve")

    async def body() -> str | None:
        nc = await notes.connect(settings, name="nodeheal-cli")
        try:
            js = nc.jetstream()
            try:
                last = await notes.until_refused(
                    last_record_of(
                        js,
                        stream=stream,
                        prefix=prefix,
                        action_id=action_id,
                        look_back=timedelta(hours=look_back_h),
                        node=node,
                    )
                )
            except NotFoundError as exc:
                msg = (
                    f"stream {stream} not found: run `nodeheal streams apply`, or pass the --prefix / "
                    "--stream-prefix of your installation"
                )
                raise click.ClickException(msg) from exc
            except (nats.errors.TimeoutError, TimeoutError, PermissionError) as exc:
                if notes.denied:
                    raise _refused(notes, nats_auth, what=f"read the {stream} stream") from exc
                raise
            if last is None:
                msg = (
                    f"no ladder is waiting for approval of {action_id}: {stream} has no record of it in the last "
                    f"{look_back_h:g} h (--look-back-h)"
                    + (f" on {node[0]}/{node[1]} (--node)" if node else "")
                    + ". Copy the id "
                    "from the awaiting_approval record (`nodeheal audit tail`, or the batch's \"waiting for "
                    'approval" line); check --prefix / --stream-prefix if this installation uses its own'
                )
                raise click.ClickException(msg)
            if last.phase != "awaiting_approval":
                msg = (
                    f"no ladder is waiting for approval of {action_id}: its last record is {last.action} "
                    f"{last.phase} on {last.cluster}/{last.node} at {last.time.isoformat()}"
                    + (f" ({last.reason})" if last.reason else "")
                    + "; nothing approved"
                )
                raise click.ClickException(msg)
            try:
                kv = await notes.until_refused(js.key_value(bucket))
            except NotFoundError as exc:
                msg = f"bucket {bucket} not found ({exc}); run `nodeheal streams apply` or pass --bucket-prefix"
                raise click.ClickException(msg) from exc
            except PermissionError as exc:
                raise _refused(notes, nats_auth, what=f"read the {bucket} bucket") from exc

            async def approve() -> str | None:
                previous = await is_approved(kv, action_id)
                await write_approval(kv, action_id=action_id, by=who, note=note)
                return previous

            try:
                return await notes.until_refused(approve())
            except (nats.errors.TimeoutError, TimeoutError, PermissionError) as exc:
                if notes.denied:
                    raise _refused(notes, nats_auth, what=f"write {approval_key(action_id)} in {bucket}") from exc
                raise
        finally:
            await nc.close()

    try:
        previous = run(body)
    except click.ClickException:
        raise
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise click.ClickException(f"approve {action_id} on {nats_url} failed: {exc!r}; nothing approved") from exc
    click.echo(f"approved {action_id} by {who}" + (f" (was already approved by {previous})" if previous else ""))


@click.command("pause")
@click.option("--reason", required=True, help="Why remediation is paused (shown in every blocked record).")
@nats_url_option
@nats_auth_options
@bucket_prefix_option
@by_option
def pause(reason: str, nats_url: str | None, nats_auth: NatsAuth, bucket_prefix: str, by: str | None) -> None:
    """Stop every remediator before its next step (fleet-wide kill switch)."""
    who = by or getpass.getuser()

    async def body() -> None:
        async def change(kv: KeyValue) -> None:
            await write_pause(kv, paused=True, reason=reason, by=who)

        await _switch(_url(nats_url), bucket_prefix, nats_auth, change, what="write the pause switch", tool="pause")
        click.echo(f"remediation paused by {who}: {reason}")

    run(body)


@click.command("resume")
@nats_url_option
@nats_auth_options
@bucket_prefix_option
@by_option
def resume(nats_url: str | None, nats_auth: NatsAuth, bucket_prefix: str, by: str | None) -> None:
    """Let the remediators act again."""
    who = by or getpass.getuser()

    async def body() -> None:
        async def change(kv: KeyValue) -> PauseState:
            before = await read_pause(kv)
            await write_pause(kv, paused=False, reason="", by=who)
            return before

        before = await _switch(
            _url(nats_url), bucket_prefix, nats_auth, change, what="write the pause switch", tool="resume"
        )
        click.echo(f"remediation resumed by {who}" + ("" if before.paused else " (it was not paused)"))

    run(body)
