"""`nodeheal up`: run the four services against a NATS server (or an embedded one), each as its
own process configured by environment variables, the way they run in Kubernetes. What a developer
runs against a real cluster: point `--kube-url`/kubeconfig and the cloud settings at it through the
services' own environment variables (see docs/)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

import click

from nodeheal.cli.common import nats_url_option, require_sim
from nodeheal.cli.procs import SERVICES, service_processes, stop_all, wait_ready
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings


@click.command("up")
@nats_url_option
@click.option("--cluster", default="default", show_default=True, help="Kubernetes cluster name used in subjects.")
@click.option(
    "--service",
    "names",
    multiple=True,
    type=click.Choice(list(SERVICES)),
    help="Run only these services (repeatable; default: all four).",
)
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Where the service logs go.")
@click.option("--no-provision", is_flag=True, help="Do not run `streams apply` first.")
def up(nats_url: str | None, cluster: str, names: tuple[str, ...], run_dir: Path | None, no_provision: bool) -> None:
    """Run the services until Ctrl-C (an embedded nats-server when no --nats-url / NATS_URL is given)."""
    logs = run_dir or Path(tempfile.mkdtemp(prefix="nodeheal-up-"))

    async def body() -> None:
        async with contextlib.AsyncExitStack() as stack:
            url = nats_url
            if not url:
                require_sim("nodeheal up without --nats-url")
                from nodeheal.sim.embedded import EmbeddedNats

                server = stack.enter_context(EmbeddedNats(log_file=str(logs / "nats-server.log")))
                url = server.url
            settings = NatsSettings(url=url)
            if not no_provision:
                nc = await connect(settings, name="nodeheal-up")
                await apply_topology(nc.jetstream(), settings.topology())
                await nc.close()
            procs = service_processes(settings=settings, cluster=cluster, run_dir=logs, names=list(names) or None)
            stack.callback(stop_all, procs)
            for proc in procs:
                proc.start()
            await wait_ready(procs)
            click.echo(f"NATS {url}")
            for proc in procs:
                click.echo(
                    f"{proc.name:<11} pid {proc.proc.pid if proc.proc else '-'}  "
                    f"http://127.0.0.1:{proc.http_port}/readyz  log {proc.log_path}"
                )
            click.echo("running; Ctrl-C stops everything")
            while all(p.alive for p in procs):  # noqa: ASYNC110 - polling child processes
                await asyncio.sleep(1)
            dead = [p for p in procs if not p.alive]
            msg = f"{dead[0].name} exited; last log lines ({dead[0].log_path}):\n{dead[0].tail()}"
            raise click.ClickException(msg)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(body())
