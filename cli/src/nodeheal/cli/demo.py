"""`nodeheal demo`: the command's options. The demo itself (simulator, emulators, embedded nats-server,
report) lives in the `nodeheal-sim` distribution, which a production install does not have."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click
from rich.console import Console

from nodeheal.cli.common import NatsAuth, nats_auth_options, require_sim


@click.command("demo")
@click.option("--nodes", type=click.IntRange(10, 50_000), default=2000, show_default=True, help="Fleet size.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds of fault injection.")
@click.option(
    "--settle",
    type=float,
    default=45.0,
    show_default=True,
    help="Most seconds to wait for repairs after the last planned fault (the zone spike's can come after --duration).",
)
@click.option("--probe-interval", type=float, default=5.0, show_default=True, help="Seconds between a node's probes.")
@click.option("--faults-per-minute", type=float, default=24.0, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--nats-url", envvar="NATS_URL", default=None, help="Use this server (streams are left there).")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    default=Path("nodeheal-report.html"),
    show_default=True,
    help="Where the HTML report goes (the JSON goes next to it).",
)
@click.option("--json", "json_out", is_flag=True, help="Print the JSON report to stdout.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Where service logs go.")
@click.option("--dry-run", is_flag=True, help="Run the remediator in dry-run mode (audit only, no action).")
@click.option("--no-partition", is_flag=True, help="Skip the rack-partition storm scenario.")
@click.option(
    "--chaos",
    is_flag=True,
    help="SIGKILL each service and the nats-server at seeded moments during the run, then restart them; "
    "exits 1 when a fault was lost or a side effect repeated.",
)
@click.option(
    "--nats-cluster",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="3: run three nats-servers on loopback as one JetStream cluster (streams at R3).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Run the embedded nats-server without authorization (default: per-role credentials from deploy/nats).",
)
@click.option(
    "--agents-per-connection",
    type=click.IntRange(1, 5000),
    default=None,
    help="Simulated node agents sharing one NATS connection (its user carries one node tag per agent); "
    "default: 1 (a user per node, as in production) up to 1,000 nodes, else 500.",
)
@click.option(
    "--sim-processes",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Processes that publish the simulated fleet's probes (sharded by node); 1: the demo process itself; "
    "0: chosen from the fleet's probe rate and this machine's cores.",
)
@click.option(
    "--detector-replicas",
    type=click.IntRange(0, 16),
    default=0,
    show_default=True,
    help="Detector processes, each owning its share of a partitioned PROBES stream (docs/detector.md); "
    "0: one per 10,000 probes/s of the fleet, at most the CPUs.",
)
@click.option(
    "--no-zone-spike", is_flag=True, help="Skip the burst of crashes in one zone (for the live correlator to find)."
)
@click.option(
    "--approve-replacements",
    is_flag=True,
    help="The demo plays the operator: every machine replacement waiting for `nodeheal approve` is approved "
    "through the same control bucket, as 'demo-operator' (named in the report). Without it a replace waits "
    "for a person, as in production.",
)
@click.option(
    "--pool-budget",
    type=click.IntRange(1, 1000),
    default=None,
    help="Most nodes of a node pool under action at once (the remediator's pool budget; default 5, or 10 percent "
    "of the pool if less); the referee counts against the same number.",
)
@nats_auth_options
def demo(
    nodes: int,
    duration: float,
    settle: float,
    probe_interval: float,
    faults_per_minute: float,
    seed: int,
    nats_url: str | None,
    report_path: Path,
    json_out: bool,
    run_dir: Path | None,
    dry_run: bool,
    no_partition: bool,
    chaos: bool,
    nats_cluster: int,
    insecure: bool,
    agents_per_connection: int | None,
    sim_processes: int,
    detector_replicas: int,
    no_zone_spike: bool,
    approve_replacements: bool,
    pool_budget: int | None,
    nats_auth: NatsAuth,
) -> None:
    """Run nodeheal end to end on this machine against a simulated fleet and print the 1-5-10 report."""
    require_sim("nodeheal demo")
    if nats_cluster == 2:
        raise click.BadParameter("a JetStream cluster needs 3 or more servers (2 cannot keep a quorum)")
    if nats_cluster >= 3 and nats_url:
        raise click.BadParameter("--nats-cluster starts its own servers; leave out --nats-url")
    from nodeheal.sim.demo import DemoConfig, DemoFailedError, run_demo

    cfg = DemoConfig(
        nodes=nodes,
        duration_s=duration,
        settle_s=settle,
        probe_interval_s=probe_interval,
        faults_per_minute=faults_per_minute,
        seed=seed,
        nats_url=nats_url,
        report_path=report_path,
        run_dir=run_dir,
        dry_run=dry_run,
        partition=not no_partition,
        chaos=chaos,
        nats_cluster=nats_cluster,
        quiet=json_out,
        insecure=insecure,
        agents_per_connection=agents_per_connection,
        sim_processes=sim_processes,
        fail_if_behind=True,
        detector_replicas=detector_replicas,
        zone_spike=not no_zone_spike,
        approve_replacements=approve_replacements,
        pool_budget=pool_budget,
        nats_base=nats_auth.settings(url=nats_url) if nats_url else None,
    )
    console = Console(stderr=True)
    try:
        report = asyncio.run(run_demo(cfg, console=console))
    except KeyboardInterrupt:
        raise click.Abort from None
    except DemoFailedError as exc:
        if exc.report is not None:  # the run finished but could not keep up: its report first
            if json_out:
                click.echo(json.dumps(exc.report, indent=2, sort_keys=True, default=str))
            else:
                from nodeheal.sim.demo_report import print_summary

                print_summary(exc.report, console=Console())
        console.print(
            f"Error: demo failed: {exc.reason} (what it measured: {exc.partial})", highlight=False, soft_wrap=True
        )
        raise SystemExit(130 if exc.interrupted else 1) from None
    except Exception as exc:
        raise click.ClickException(f"demo failed: {exc}") from exc
    json_path = report_path.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    if json_out:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        from nodeheal.sim.demo_report import print_summary

        print_summary(report, console=Console())
    console.print(f"report: {report_path} and {json_path}", highlight=False)
    judged = report.get("chaos") or {}
    if chaos and (judged.get("lost_faults") or judged.get("repeated_side_effects")):
        console.print(
            f"demo --chaos: {judged.get('lost_faults')} lost fault(s), "
            f"{judged.get('repeated_side_effects')} repeated side effect(s) (the report's chaos section)",
            highlight=False,
        )
        raise SystemExit(1)
    if os.environ.get("NODEHEAL_DEMO_STRICT") == "1":
        unsafe = not (report.get("safety") or {}).get("all_zero", True)
        violations = (report.get("security") or {}).get("permission_violations", 0)
        if unsafe or violations or report["policy"]["budget_violations"]:
            console.print("demo strict: the safety or security section is not all zeros", highlight=False)
            raise SystemExit(1)
