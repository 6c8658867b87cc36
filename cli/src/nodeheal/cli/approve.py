"""`nodeheal approve ACTION_ID`, `nodeheal pause`, `nodeheal resume`: people steering the remediator
through the `nodeheal-control` bucket (the remediator reads it before every step)."""

from __future__ import annotations

import getpass

import click
from nats.aio.client import Client
from nats.js.kv import KeyValue

from nodeheal.cli.common import NatsAuth, nats_auth_options, nats_url_option, run
from nodeheal.remediator.control import is_approved, read_pause, write_approval, write_pause
from nodeheal.runtime.connect import connect

bucket_prefix_option = click.option(
    "--bucket-prefix", default="nodeheal", show_default=True, help="Prefix of the key-value bucket names."
)
by_option = click.option("--by", default=None, help="Who is deciding (default: the login name); goes to the audit.")


async def _control(url: str, bucket_prefix: str, auth: NatsAuth) -> tuple[Client, KeyValue]:
    nc = await connect(auth.settings(url=url, bucket_prefix=bucket_prefix), name="nodeheal-cli")
    try:
        kv = await nc.jetstream().key_value(f"{bucket_prefix}-control")
    except Exception as exc:
        await nc.close()
        msg = f"bucket {bucket_prefix}-control not found ({exc}); run `nodeheal streams apply` first"
        raise click.ClickException(msg) from exc
    return nc, kv


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
@by_option
def approve(
    action_id: str, note: str, nats_url: str | None, nats_auth: NatsAuth, bucket_prefix: str, by: str | None
) -> None:
    """Approve one action waiting in `awaiting_approval` (its id is in the audit record)."""
    if not action_id.startswith("act-"):
        msg = f"{action_id!r} is not an action id; copy it from an awaiting_approval record (it starts with 'act-')"
        raise click.BadParameter(msg, param_hint="ACTION_ID")
    who = by or getpass.getuser()

    async def body() -> None:
        nc, kv = await _control(_url(nats_url), bucket_prefix, nats_auth)
        try:
            previous = await is_approved(kv, action_id)
            await write_approval(kv, action_id=action_id, by=who, note=note)
        finally:
            await nc.close()
        click.echo(f"approved {action_id} by {who}" + (f" (was already approved by {previous})" if previous else ""))

    run(body)


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
        nc, kv = await _control(_url(nats_url), bucket_prefix, nats_auth)
        try:
            await write_pause(kv, paused=True, reason=reason, by=who)
        finally:
            await nc.close()
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
        nc, kv = await _control(_url(nats_url), bucket_prefix, nats_auth)
        try:
            before = await read_pause(kv)
            await write_pause(kv, paused=False, reason="", by=who)
        finally:
            await nc.close()
        click.echo(f"remediation resumed by {who}" + ("" if before.paused else " (it was not paused)"))

    run(body)
