"""`nodeheal streams apply`: create or update the streams and key-value buckets, idempotently."""

from __future__ import annotations

import click

from nodeheal.cli.common import (
    ConnectionNotes,
    NatsAuth,
    embedded_option,
    nats_auth_options,
    nats_endpoint,
    nats_url_option,
    run,
)
from nodeheal.runtime.provision import Change, apply_topology
from nodeheal.schemas.streams import DEFAULT_STORE_BYTES, MIN_STORE_BYTES


@click.group()
def streams() -> None:
    """Provision and inspect the JetStream streams and buckets."""


@streams.command("apply")
@nats_url_option
@nats_auth_options
@embedded_option
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Stream replicas: 1 on a single server, 3 on a JetStream cluster.",
)
@click.option("--prefix", default="nodeheal", show_default=True, help="Subject prefix.")
@click.option("--stream-prefix", default="", help="Prefix for stream names (side-by-side installs).")
@click.option("--bucket-prefix", default="nodeheal", show_default=True, help="Prefix for bucket names.")
@click.option(
    "--probe-partitions",
    type=click.IntRange(0, 1024),
    default=0,
    show_default=True,
    help="Partition PROBES into N (subject transform) so detector replicas split the fleet; 0 = off.",
)
@click.option(
    "--store-gib",
    type=click.FloatRange(MIN_STORE_BYTES / 1024**3, 1_000_000),
    default=DEFAULT_STORE_BYTES / 1024**3,
    show_default=True,
    help="GiB the streams and buckets may hold together, per replica; each gets its fixed share as its own cap"
    " (size the NATS volume and max_file_store above it).",
)
def apply(
    nats_url: str | None,
    nats_auth: NatsAuth,
    embedded: bool,
    replicas: int,
    prefix: str,
    stream_prefix: str,
    bucket_prefix: str,
    probe_partitions: int,
    store_gib: float,
) -> None:
    """Create or update every stream and bucket; print what was created or changed.

    Running it twice changes nothing the second time.
    """
    with nats_endpoint(nats_url, embedded=embedded) as url:
        settings = nats_auth.settings(
            url=url,
            embedded=embedded,
            prefix=prefix,
            stream_prefix=stream_prefix,
            bucket_prefix=bucket_prefix,
            probe_partitions=probe_partitions,
            store_bytes=int(store_gib * 1024**3),
        )

        notes = ConnectionNotes(
            nats_auth,
            tool="streams apply",
            needs="Creating and updating the streams and buckets needs the admin credential (deploy/nats/natsauth.py "
            "writes admin.creds; pass --creds admin.creds or set NATS_CREDS)",
            resumes="each step is tried again",
        )

        async def body() -> list[Change]:
            nc = await notes.connect(settings, name="nodeheal-streams-apply")
            try:
                # a refused request only times out, and each is waited out patiently: stop at the first refusal
                return await notes.until_refused(apply_topology(nc.jetstream(), settings.topology(), replicas=replicas))
            finally:
                await nc.close()

        try:
            changes = run(body)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        except Exception as exc:
            raise click.ClickException(f"streams apply against {url} failed: {notes.explain(exc)}") from exc
    for change in changes:
        click.echo(change.describe())
    touched = sum(1 for c in changes if c.action != "unchanged")
    click.echo(f"{touched} of {len(changes)} streams and buckets created or changed")
