"""`nodeheal normalize --source SOURCE FILE`: the `CloudSystemEvent`s a raw payload becomes.

For operators checking a payload offline: nothing is published. One JSON object per line on stdout;
bad input: a message on stderr saying what was wrong and where, exit 2.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import BinaryIO

import click

from nodeheal.cloud_events.normalize import AUTO, SOURCES, NormalizeContext, PayloadError, normalize_stream

UNKNOWN_INSTANCE = "unknown"


@click.command("normalize")
@click.option(
    "--source",
    "source",
    type=click.Choice([*SOURCES, AUTO]),
    required=True,
    help="The channel the payload came from; `auto` tells it from the payload's shape.",
)
@click.option("--cluster", default="default", show_default=True, help="Cluster name put into the events.")
@click.option(
    "--instance-id",
    default=None,
    help="Instance the payload was read on, for channels whose payload names none (aws-imds, gce-metadata).",
)
@click.option(
    "--observed-at",
    default=None,
    help="Observation time (ISO-8601, default now); decides AWS active → scheduled or in_progress.",
)
@click.option("--no-raw", is_flag=True, default=False, help="Leave the raw payload out of the output.")
@click.argument("file", type=click.File("rb"))
def normalize(
    source: str, cluster: str, instance_id: str | None, observed_at: str | None, no_raw: bool, file: BinaryIO
) -> None:
    """Print the events FILE (or `-` for stdin) becomes, one JSON object per line.

    FILE may hold several documents (JSON lines; for azure-imds also a JSON array of documents; for
    gce-metadata one value per line); they are read in order, so Azure events that disappear and
    GCE values returning to NONE show as completions.
    """
    raw = file.read()
    name = getattr(file, "name", "-")
    when = datetime.now(tz=UTC)
    if observed_at:
        try:
            when = datetime.fromisoformat(observed_at.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"{observed_at!r} is not an ISO-8601 time", param_hint="--observed-at") from None
        if when.tzinfo is None:
            raise click.BadParameter(f"{observed_at!r} has no timezone; add Z or +00:00", param_hint="--observed-at")
    ctx = NormalizeContext(observed_at=when, cluster=cluster, instance_id=instance_id or UNKNOWN_INSTANCE)
    try:
        events = normalize_stream(source, raw, ctx)
    except PayloadError as exc:
        click.echo(f"nodeheal normalize: {name}: {exc}", err=True)
        click.echo("check the payload and --source (see docs/cloud-events.md)", err=True)
        sys.exit(2)
    exclude = {"raw"} if no_raw else None
    for event in events:
        click.echo(event.model_dump_json(by_alias=True, exclude=exclude))
    if not events:
        click.echo(f"nodeheal normalize: {name}: a valid payload with no instance system events in it", err=True)
    elif instance_id is None and any(e.instance_id == UNKNOWN_INSTANCE for e in events):
        click.echo(
            "nodeheal normalize: the payload names no instance; shown as 'unknown' (use --instance-id)", err=True
        )
