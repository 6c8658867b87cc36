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

from nodeheal.cli.common import NatsAuth, nats_auth_options, nats_url_option, require_sim
from nodeheal.cli.procs import SERVICES, ServiceProcess, service_processes, stop_all, wait_ready
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology


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
@click.option(
    "--role-creds",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory of per-role .creds files as `deploy/nats/natsauth.py init --out DIR` writes them: each "
    "service connects as its own role (DIR/<service>.creds, inbox _INBOX.<service>); --creds defaults to "
    "DIR/admin.creds.",
)
@nats_auth_options
def up(
    nats_url: str | None,
    cluster: str,
    names: tuple[str, ...],
    run_dir: Path | None,
    no_provision: bool,
    role_creds: Path | None,
    nats_auth: NatsAuth,
) -> None:
    """Run the services until Ctrl-C (an embedded nats-server when no --nats-url / NATS_URL is given).

    Against a server with deploy/nats's authorization: --creds (the admin user, for provisioning),
    --role-creds DIR (one user per service) and --tls-ca when it speaks TLS."""
    logs = run_dir or Path(tempfile.mkdtemp(prefix="nodeheal-up-"))
    selected = list(names) or list(SERVICES)
    if role_creds is not None:
        missing = [f"{name}.creds" for name in selected if not (role_creds / f"{name}.creds").is_file()]
        if missing:
            raise click.BadParameter(f"{role_creds} has no {', '.join(missing)}", param_hint="--role-creds")
        if nats_auth.creds_file is None and (role_creds / "admin.creds").is_file():
            nats_auth = NatsAuth(creds_file=str(role_creds / "admin.creds"), tls_ca_file=nats_auth.tls_ca_file)

    async def body() -> None:
        async with contextlib.AsyncExitStack() as stack:
            url = nats_url
            embedded = not url
            if not url:
                require_sim("nodeheal up without --nats-url")
                from nodeheal.sim.embedded import EmbeddedNats

                server = stack.enter_context(EmbeddedNats(log_file=str(logs / "nats-server.log")))
                url = server.url
            settings = nats_auth.settings(url=url, embedded=embedded)
            if not no_provision:
                nc = await connect(settings, name="nodeheal-up")
                await apply_topology(nc.jetstream(), settings.topology())
                await nc.close()
            procs = service_processes(settings=settings, cluster=cluster, run_dir=logs, names=selected)
            if not embedded:
                for proc in procs:
                    proc.env |= service_auth_env(proc, role_creds=role_creds, tls_ca=nats_auth.tls_ca_file)
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


def service_auth_env(proc: ServiceProcess, *, role_creds: Path | None, tls_ca: str | None) -> dict[str, str]:
    """A service's NATS access as its deployment gives it: its role's .creds and inbox prefix (the role is
    the service's name in deploy/nats/natsauth.py), and the CA that signed the server's certificate."""
    prefix = SERVICES[proc.name][0]
    env: dict[str, str] = {}
    if role_creds is not None:
        env[f"{prefix}NATS__CREDS_FILE"] = str((role_creds / f"{proc.name}.creds").resolve())
        env[f"{prefix}NATS__INBOX_PREFIX"] = f"_INBOX.{proc.name}"
    if tls_ca is not None:
        env[f"{prefix}NATS__TLS_CA_FILE"] = str(Path(tls_ca).resolve())
    return env
