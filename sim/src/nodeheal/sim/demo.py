"""`nodeheal demo`: the main job on one machine.

An embedded nats-server (or `--nats-url`), the streams, the four real services as separate
processes (cloud-events ingest with its Alibaba poller, detector, diagnoser, remediator), a simulated
fleet whose outside world answers over HTTP in the providers' real formats (the ECS OpenAPI emulator
for the official Alibaba SDK, kmock's Kubernetes emulator for the official kubernetes client), faults
injected with ground truth, a live progress view, and at the end the 1-5-10 report (HTML with plots,
JSON with `--json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.js.errors import BadRequestError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from nodeheal.cli.procs import SERVICES, ServiceProcess, free_port, service_processes, stop_all, wait_ready
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.subjects import escape_token
from nodeheal.sim.auth import DemoAuth
from nodeheal.sim.bench.secure import self_signed_tls
from nodeheal.sim.chaos import Chaos, plan_chaos
from nodeheal.sim.cluster import EmbeddedCluster
from nodeheal.sim.demo_report import RunRecord, build_report, collect_window, write_html
from nodeheal.sim.embedded import EmbeddedNats
from nodeheal.sim.engine import FleetSimulator, SimTimings
from nodeheal.sim.faults import HARDWARE_CRASH_CLASSES, PlannedFault, plan_faults
from nodeheal.sim.fleet import FleetSpec
from nodeheal.sim.liveness import Liveness
from nodeheal.sim.referee import ViolationCounter, WorldLog, judge, lost_and_repeated, security_section
from nodeheal.sim.rotation import DemoOperator, FleetRotation, add_launch_templates
from nodeheal.sim.scale import (
    KEPT_INTERVAL_SLACK,
    PROBE_PARTITIONS,
    ProcessMeter,
    StreamMeter,
    auto_detector_replicas,
    auto_sim_processes,
    fell_behind,
    rates,
)
from nodeheal.sim.shard import ProbeShards, ShardPlan, node_state
from nodeheal.sim.world import DEFAULT_BUDGETS, DemoWorld

REPORT_ANOMALIES_LIMIT = 50_000
"""More anomalies than this in the run's window is a storm (at 1 KB on the wire and ≈ 14 KB once parsed
and built into incidents, 193,598 anomalies took the demo process to 2.8 GB): the report then reads
only the anomalies of the nodes that had injected faults."""


VERIFY_GRACE_S = 60.0
"""How long after a node's reboot the run waits for the ladder that rebooted it to verify and give it back."""


def injection_window_s(plan: Sequence[PlannedFault], duration_s: float) -> float:
    """Seconds from the first fault's time to the last planned injection, `--duration` at least. The zone
    spike's crashes can outlast `--duration` (12 crashes 7 s apart from 45 % of it on); the settle is counted
    from here, so every planned fault is injected and given the whole settle to be repaired."""
    return max(duration_s, max((p.at_s for p in plan), default=0.0))


def verifying(boots: Iterable[tuple[float, str]], cordoned: Iterable[str], now: float) -> bool:
    """A node that came back from a reboot less than VERIFY_GRACE_S ago is still cordoned: the ladder that
    rebooted it is verifying the new boot and will uncordon it. The simulator closes a fault when the machine
    is back; ending the run right then (a chaos run did, 12 s after the last reboot) counted a repair whose
    verification was seconds away as unresolved."""
    recent = {node for at, node in boots if now - at < VERIFY_GRACE_S}
    return bool(recent) and not recent.isdisjoint(cordoned)


@dataclass
class DemoConfig:
    nodes: int = 2000
    duration_s: float = 60.0
    settle_s: float = 45.0
    probe_interval_s: float = 5.0
    faults_per_minute: float = 24.0
    seed: int = 7
    nats_url: str | None = None
    report_path: Path = Path("nodeheal-report.html")
    json_path: Path | None = None
    run_dir: Path | None = None
    dry_run: bool = False
    partition: bool = True
    quiet: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[str] | None = None  # all four unless a test narrows it
    chaos: bool = False  # SIGKILL every service (and a nats-server) at seeded moments, then restart it
    nats_cluster: int = 1  # 3: three nats-servers on loopback as one JetStream cluster, streams at R3
    insecure: bool = False  # no NATS authorization on the embedded server(s)
    nats_base: NatsSettings | None = None  # with nats_url: the access the caller gives (creds, TLS CA)
    agents_per_connection: int | None = None  # None: 1 (per-node users) up to 1,000 nodes, else 500
    connect_timeout_s: float = 30.0  # the first connection to NATS; then the demo fails with the reason
    sim_processes: int = 0  # >1: this many probe shard processes (nodeheal.sim.shard); 0: by fleet size and cores
    tls: bool = True  # the embedded server requires TLS (a throwaway CA in the run directory), as deploy/ runs
    fail_if_behind: bool = False  # `nodeheal demo`: True: a run that could not keep up raises after its report
    memory_limit_mb: float = 4096.0  # a process of the run above this is "fell behind" (issue 19)
    report_anomalies_limit: int = REPORT_ANOMALIES_LIMIT
    detector_replicas: int = 0  # detector processes over a partitioned PROBES; 0: by the fleet's probe rate
    pool_budget: int | None = None  # the remediator's pool budget (most nodes of a pool under action); None: 5
    shard_nice: int = 0  # >0: probe shards run at this nice value (docs/demo.md: tried +5, starved on a shared machine)
    zone_spike: bool = True  # a burst of crashes of one bucket in one zone, for the live correlator to find
    approve_replacements: bool = False  # the demo plays the operator: approves each `replace` (sim/rotation.py)


def _service_table(
    *,
    settings: NatsSettings,
    cfg: DemoConfig,
    world: DemoWorld,
    run_dir: Path,
    cluster: str,
    auth: DemoAuth,
    replicas: int = 1,
) -> list[ServiceProcess]:
    """The four services, pointed at the simulated world's endpoints through their environment."""
    extra: dict[str, dict[str, str]] = {
        "detector": {
            "NODEHEAL_DETECTOR_RULES__PROBE_INTERVAL_S": str(cfg.probe_interval_s),
            # event-like anomalies (a kernel fault line) resolve after a quiet period: 120 s in
            # production, scaled like the rest of the simulated time
            "NODEHEAL_DETECTOR_RULES__EVENT_HOLD_S": str(max(20.0, cfg.probe_interval_s * 6)),
        },
        "diagnoser": {
            # a lone dark node waits 60 s in production; the simulated racks go dark within
            # `partition_spread_s` (20 s), so the demo holds that long and its crashes are known sooner
            "NODEHEAL_DIAGNOSER_NODE_DOWN_HOLD_S": str(SimTimings().partition_spread_s),
        },
        "remediator": {
            "NODEHEAL_REMEDIATOR_KUBE__API_URL": world.kube_url,
            "NODEHEAL_REMEDIATOR_KUBE__VERIFY_TLS": "false",
            "NODEHEAL_REMEDIATOR_KUBE__DRAIN_TIMEOUT_S": "30",
            "NODEHEAL_REMEDIATOR_CLOUD__PROVIDER": "alibaba",
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ENDPOINT": world.ecs_endpoint,
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_PROTOCOL": "http",
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ACCESS_KEY_ID": "demo-ak",
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ACCESS_KEY_SECRET": "demo-secret",
            # node pool → launch template a replaced machine is recreated from (sim/rotation.py)
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_LAUNCH_TEMPLATES": json.dumps(
                {t.node_pool: t.template_id for t in world.ecs.launch_templates.values() if t.node_pool}
            ),
            "NODEHEAL_REMEDIATOR_VERIFY_TIMEOUT_S": str(max(60.0, world.reboot_s * 3)),
            # the rungs' own times (a reboot 900 s) are real-world ones; the demo's machines boot in seconds
            "NODEHEAL_REMEDIATOR_VERIFY_TIMEOUT_MAX_S": str(max(60.0, world.reboot_s * 3)),
            "NODEHEAL_REMEDIATOR_POLICY__DRY_RUN": "true" if cfg.dry_run else "false",
            "NODEHEAL_REMEDIATOR_POLICY__APPROVAL_REQUIRED": "[]",
            "NODEHEAL_REMEDIATOR_POLICY__HOST_REBOOT_GUARD_S": str(world.maintenance_notice_s * 2),
            "NODEHEAL_REMEDIATOR_POLICY__POOL_BUDGET__MAX_COUNT": str(world.budgets["pool"][0]),
        },
        "ingest": {
            "NODEHEAL_INGEST_ALIBABA__ENABLED": "true",
            "NODEHEAL_INGEST_ALIBABA__ENDPOINT": world.ecs_endpoint,
            "NODEHEAL_INGEST_ALIBABA__PROTOCOL": "http",
            "NODEHEAL_INGEST_ALIBABA__REGION_IDS": json.dumps([world.region]),
            "NODEHEAL_INGEST_AUTH_TOKEN": "demo-webhook-token",
            "NODEHEAL_INGEST_ALIBABA__ACCESS_KEY_ID": "demo-ak",
            "NODEHEAL_INGEST_ALIBABA__ACCESS_KEY_SECRET": "demo-secret",
            "NODEHEAL_INGEST_ALIBABA__INTERVAL_S": "2",
        },
    }
    for name, env in extra.items():
        env |= auth.service_env(name, prefix=SERVICES[name][0], url=settings.url)
        if settings.tls_ca_file:
            env[f"{SERVICES[name][0]}NATS__TLS_CA_FILE"] = settings.tls_ca_file
        if settings.probe_partitions:
            env[f"{SERVICES[name][0]}NATS__PROBE_PARTITIONS"] = str(settings.probe_partitions)
        env |= cfg.extra_env
    services = service_processes(
        settings=settings, cluster=cluster, run_dir=run_dir, extra_env=extra, names=cfg.services
    )
    return _replicate_detector(services, replicas=replicas)


def _replicate_detector(services: list[ServiceProcess], *, replicas: int) -> list[ServiceProcess]:
    """`replicas` detector processes (`detector-<i>`), each owning its share of PROBES' partitions, as
    the detector's StatefulSet runs them (docs/detector.md, "Horizontal scale")."""
    if replicas <= 1:
        return services
    prefix = SERVICES["detector"][0]
    out: list[ServiceProcess] = []
    for svc in services:
        if svc.name != "detector":
            out.append(svc)
            continue
        for i in range(replicas):
            port = free_port()
            env = svc.env | {
                f"{prefix}REPLICAS": str(replicas),
                f"{prefix}REPLICA": str(i),
                f"{prefix}HTTP_PORT": str(port),
                f"{prefix}INSTANCE": f"detector-{i}",
            }
            out.append(
                ServiceProcess(f"detector-{i}", list(svc.args), env, port, svc.log_path.with_name(f"detector-{i}.log"))
            )
    return out


def _progress_table(
    *,
    phase: str,
    elapsed: float,
    sim: FleetSimulator,
    counts: dict[str, int],
    services: list[ServiceProcess],
    live: dict[str, float],
) -> Table:
    table = Table(title=f"nodeheal demo — {phase} — {elapsed:5.0f}s", show_header=True, expand=False)
    table.add_column("fleet")
    table.add_column("faults")
    table.add_column("pipeline")
    table.add_column("services")
    health = sim.stats.samples[-1] if sim.stats.samples else {"online": 1.0, "healthy": 1.0}
    fleet = (
        f"{len(sim.nodes)} nodes\nonline {health['online']:.1%}\nhealthy {health['healthy']:.1%}\n"
        f"probes {sim.stats.probes_published + int(live.get('probes_published', 0)):,}\n"
        f"interval {max(sim.stats.interval_last_s, live.get('interval_last_s', 0.0)):.1f}s"
    )
    faults = f"injected {len(sim.truth)}\nopen {len(sim.open_faults)}\nreboots {sim.stats.reboots}"
    pipeline = (
        f"cloud events {counts.get('cloud', 0)}\nanomalies {counts.get('anomaly', 0)}\n"
        f"diagnoses {counts.get('diagnosis', 0)}\naudit {counts.get('audit', 0)}"
    )
    svc = "\n".join(f"{s.name}: {'up' if s.alive else 'DOWN'}" for s in services)
    table.add_row(fleet, faults, pipeline, svc)
    return table


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class DemoFailedError(RuntimeError):
    """The demo could not finish, or could not keep up: `reason` is one line; what was measured is in the
    JSON file `partial` (the whole report, in `report`, when the run finished but fell behind)."""

    def __init__(
        self, reason: str, *, partial: Path, report: dict[str, Any] | None = None, interrupted: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.report = report
        self.interrupted = interrupted  # stopped by SIGINT / SIGTERM


@dataclass
class _Progress:
    """What a run has measured so far, for the report of a run that cannot finish."""

    stage: str = "starting"
    sim: FleetSimulator | None = None
    world: DemoWorld | None = None
    run_dir: Path | None = None
    meter: ProcessMeter | None = None
    shards: ProbeShards | None = None
    memory_limit_mb: float = 4096.0
    interrupted: bool = False  # SIGINT / SIGTERM received: stop fast

    def partial(self, reason: str) -> dict[str, Any]:
        out: dict[str, Any] = {"failed": reason, "stage": self.stage, "run_dir": str(self.run_dir)}
        if self.meter is not None:
            with contextlib.suppress(Exception):
                self.meter.sample()
                out["processes"] = self.meter.section(limit_mb=self.memory_limit_mb)
        if self.sim is not None and self.shards is not None:
            with contextlib.suppress(Exception):
                _fold_progress(self.shards, self.sim)
        if self.sim is not None:
            out["simulator"] = _sim_section(self.sim, interval_s=self.sim.timings.probe_interval_s) | {
                "nodes": len(self.sim.nodes),
                "faults_injected": len(self.sim.truth),
                "faults_open": len(self.sim.open_faults),
            }
        if self.world is not None:
            with contextlib.suppress(Exception):
                out["world"] = self.world.summary()
        return out


CONSUMER_LIMIT_ERR = 10026  # JetStream: maximum consumers limit reached
CONSUMER_LIMIT_WAIT_S = 180.0
"""How long the report waits for the server's consumer limit to free up (the services' ephemeral readers
expire after 120 s of inactivity) before the run fails."""


async def _collect_with_retries(
    js: Any, *, settings: NatsSettings, since: datetime, until: datetime, anomaly_nodes: list[str] | None
) -> tuple[list[Any], list[dict[str, Any]], int]:
    """`collect_window`, waiting while the server refuses a new consumer ("maximum consumers limit
    reached": after a storm the services' short-lived readers can hold the limit for a while)."""
    deadline = time.monotonic() + CONSUMER_LIMIT_WAIT_S
    retries = 0
    while True:
        try:
            messages, findings = await collect_window(
                js, settings=settings, since=since, until=until, anomaly_nodes=anomaly_nodes
            )
        except BadRequestError as exc:
            if exc.err_code != CONSUMER_LIMIT_ERR or time.monotonic() > deadline:
                raise
            retries += 1
            await asyncio.sleep(10.0)
            continue
        return messages, findings, retries


PER_NODE_USERS_UP_TO = 1000
"""Up to this fleet size every simulated agent connects as its own per-node user (a connection costs
≈ 4 ms of CPU to open and ≈ 16 KB here); above it agents share connections (docs/demo.md)."""


def _add_counters(sim: FleetSimulator, counters: dict[str, Any]) -> None:
    stats = sim.stats
    stats.probes_published += int(counters["probes_published"])
    stats.publish_errors += int(counters["publish_errors"])
    stats.collected += int(counters["collected"])
    stats.collect_s += counters["collect_s"]
    stats.collect_timed += int(counters.get("collect_timed", 0))
    stats.lag_s_max = max(stats.lag_s_max, counters["lag_s_max"])
    stats.lag_s_last = max(stats.lag_s_last, counters.get("lag_s_last", 0.0))
    stats.flush_wait_s += counters.get("flush_wait_s", 0.0)
    stats.flush_wait_s_max = max(stats.flush_wait_s_max, counters.get("flush_wait_s_max", 0.0))
    stats.flush_timeouts += int(counters.get("flush_timeouts", 0))
    stats.flush_skipped += int(counters.get("flush_skipped", 0))
    stats.probes_held += int(counters.get("probes_held", 0))
    stats.interval_sum_s += counters.get("interval_sum_s", 0.0)
    stats.intervals += int(counters.get("intervals", 0))
    stats.interval_max_s = max(stats.interval_max_s, counters.get("interval_max_s", 0.0))
    stats.interval_last_s = max(stats.interval_last_s, counters.get("interval_last_s", 0.0))
    stats.stretched_s = max(stats.stretched_s, counters.get("stretched_s", 0.0))


def _stop_shards(shards: ProbeShards, sim: FleetSimulator) -> None:
    """Stop the probe shards and add their counters to the simulator's."""
    for counters in shards.stop():
        _add_counters(sim, counters)


def _fold_progress(shards: ProbeShards, sim: FleetSimulator) -> None:
    """For a run that fails: add the shards' latest counters (they may never send their final ones)."""
    shards.poll_progress()
    for counters in shards.progress.values():
        _add_counters(sim, counters)
    shards.progress.clear()


def _sim_section(sim: FleetSimulator, *, interval_s: float, live: dict[str, float] | None = None) -> dict[str, Any]:
    """The simulator's counters (with `live`: the shards' latest, added to this process's own)."""
    stats = sim.stats
    live = live or {}
    collected = stats.collected + live.get("collected", 0)
    lag = max(stats.lag_s_max, live.get("lag_s_max", 0.0))
    gaps = stats.intervals + int(live.get("intervals", 0))
    effective = (stats.interval_sum_s + live.get("interval_sum_s", 0.0)) / gaps if gaps else 0.0
    return {
        "probes_published": stats.probes_published + int(live.get("probes_published", 0)),
        "publish_errors": stats.publish_errors + int(live.get("publish_errors", 0)),
        "commands_answered": stats.commands_answered,
        "reboots": stats.reboots,
        "redeploys": stats.redeploys,
        "agent_probes_collected": collected,
        # the real ProbeCollector over the simulated host, plus encoding the probe
        "agent_collect_cpu_us_per_probe": round(
            1e6
            * (stats.collect_s + live.get("collect_s", 0.0))
            / max(1, stats.collect_timed + live.get("collect_timed", 0)),
            1,
        ),
        # what the nodes really got: the measured gap between two probes of a node, averaged over every
        # node and probe (the cadence stretches evenly when the machine cannot keep the requested one)
        "requested_interval_s": interval_s,
        "effective_interval_s": round(effective, 3),
        "effective_interval_max_s": round(max(stats.interval_max_s, live.get("interval_max_s", 0.0)), 3),
        "share_of_requested_rate": round(min(1.0, interval_s / effective), 3) if effective else None,
        "schedule_stretched_s": round(max(stats.stretched_s, live.get("stretched_s", 0.0)), 1),
        "max_lag_behind_interval_s": round(lag, 3),
        # the lag at the last tick (the shards' last report): did it recover?
        "lag_behind_interval_s_at_end": round(max(stats.lag_s_last, live.get("lag_s_last", 0.0)), 3),
        # every node probed at the requested interval (within `KEPT_INTERVAL_SLACK`) on average
        "kept_interval": (effective or interval_s) <= interval_s * KEPT_INTERVAL_SLACK,
        # back-pressure: time the publishers waited for the server to read what they sent
        "publish_flush_wait_s": round(stats.flush_wait_s + live.get("flush_wait_s", 0.0), 1),
        "publish_flush_wait_s_max": round(max(stats.flush_wait_s_max, live.get("flush_wait_s_max", 0.0)), 3),
        "publish_flush_timeouts": stats.flush_timeouts + int(live.get("flush_timeouts", 0)),
        # flushes not waited for: the connection's server was gone (it publishes again on reconnect)
        "publish_flush_skipped": stats.flush_skipped + int(live.get("flush_skipped", 0)),
        # probes not taken while their connection's server was away (the node probes again once connected)
        "probes_held_reconnecting": stats.probes_held + int(live.get("probes_held", 0)),
    }


STOP_GRACE_S = 5.0
"""After Ctrl-C (SIGINT) or SIGTERM: how long the run may take to stop its parts in order before the
process leaves without them (its children die with it: PR_SET_PDEATHSIG)."""


async def run_demo(cfg: DemoConfig, *, console: Console) -> dict[str, Any]:
    """Run the demo; if it cannot finish, raise `DemoFailedError` (one-line reason) after writing what it
    measured to the report's JSON path. SIGINT (Ctrl-C) and SIGTERM stop it within seconds the same way:
    what was measured so far is written first, then the parts are stopped."""
    run_dir = cfg.run_dir or Path(tempfile.mkdtemp(prefix="nodeheal-demo-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(run_dir=run_dir, memory_limit_mb=cfg.memory_limit_mb)
    partial = cfg.report_path.with_suffix(".json")

    def write_partial(reason: str) -> None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(progress.partial(reason), indent=2, sort_keys=True, default=str))

    loop = asyncio.get_running_loop()
    run = asyncio.create_task(_run(cfg, console=console, run_dir=run_dir, progress=progress), name="demo-run")
    signalled = asyncio.Event()
    received: list[str] = []

    def on_signal(name: str) -> None:
        received.append(name)
        progress.interrupted = True
        signalled.set()

    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread / no Unix
            loop.add_signal_handler(sig, on_signal, sig.name)
            handled.append(sig)
    waiter = asyncio.create_task(signalled.wait(), name="demo-signal")
    try:
        await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            reason = f"interrupted by {received[0]} while {progress.stage}"
            with contextlib.suppress(Exception):
                write_partial(reason)
            run.cancel()
            stopped, _ = await asyncio.wait({run}, timeout=STOP_GRACE_S)
            if not stopped:
                # a part that does not stop in time (a blocked thread, a server that does not answer) must not
                # keep the user waiting: the children die with this process
                console.print(
                    f"Error: demo {reason}; not every part stopped within {STOP_GRACE_S:g} s, leaving"
                    f" (what it measured: {partial})",
                    highlight=False,
                    soft_wrap=True,
                )
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            raise DemoFailedError(reason, partial=partial, interrupted=True)
        report = run.result()
    except (DemoFailedError, KeyboardInterrupt, asyncio.CancelledError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = f"{progress.stage}: {type(exc).__name__}: {first}"
        write_partial(reason)
        # with the traceback: the stage says what the demo was doing, the traceback which call failed
        (run_dir / "failure.txt").write_text(f"{reason}\n\n{''.join(traceback.format_exception(exc))}")
        raise DemoFailedError(reason, partial=partial) from exc
    finally:
        waiter.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)
    behind = (report.get("scale") or {}).get("fell_behind")
    if behind and cfg.fail_if_behind:
        raise DemoFailedError(f"fell behind: {behind}", partial=partial, report=report)
    return report


async def _run(cfg: DemoConfig, *, console: Console, run_dir: Path, progress: _Progress) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        # 4 GiB of stream caps (PROBES 1.6 GiB, ~1.5 M probes): the default 1 GiB is sized for tests
        base = (cfg.nats_base or NatsSettings()).model_copy(update={"store_bytes": 4 * 1024**3})
        detectors = cfg.detector_replicas or auto_detector_replicas(nodes=cfg.nodes, interval_s=cfg.probe_interval_s)
        if cfg.nats_url:
            detectors = 1  # a server the demo does not manage keeps its own PROBES layout
        elif detectors > 1:
            # the production answer above one detector's ceiling: PROBES partitioned by node, a replica each
            base = base.model_copy(update={"probe_partitions": max(PROBE_PARTITIONS, detectors)})
        per_connection = cfg.agents_per_connection or (1 if cfg.nodes <= PER_NODE_USERS_UP_TO else 500)
        server_logs: list[Path] = []
        server_pids: Callable[[], dict[str, int | None]] = dict
        kill_server: Callable[[int], int | None] | None = None
        restart_server: Callable[[int], None] | None = None
        replicas = 1
        if cfg.nats_url:
            auth = DemoAuth(mode="external", directory=run_dir, base=base)
            url = cfg.nats_url
        else:
            auth = (
                DemoAuth(mode="insecure", directory=run_dir, base=base)
                if cfg.insecure
                else DemoAuth.per_role(run_dir / "nats-auth", base=base, detector_replicas=detectors)
            )
            auth.agents_per_connection = per_connection
            if cfg.tls and not cfg.insecure and cfg.nats_cluster < 3:
                # TLS as deploy/ runs the server (a throwaway CA and certificate in the run directory)
                tls_dir = run_dir / "nats-tls"
                tls_dir.mkdir(parents=True, exist_ok=True)
                ca, cert, key = self_signed_tls(tls_dir)
                auth.base = auth.base.model_copy(update={"tls_ca_file": str(ca)})
                auth.server_tls = (cert, key)
            config = auth.server_config()
            if cfg.nats_cluster >= 3:
                cluster = stack.enter_context(
                    EmbeddedCluster(
                        cfg.nats_cluster, log_dir=str(run_dir), extra_config=config.read_text() if config else ""
                    )
                )
                url, replicas = cluster.url, 3
                probes_stream = f"{auth.base.stream_prefix}PROBES"

                def kill_probes_leader(index: int, cluster: EmbeddedCluster = cluster) -> int:
                    """The chaos monkey's server kill: the one leading PROBES at that moment (the detector's
                    input stream: its election is the worst case for finding faults), else the planned one."""
                    return cluster.kill_leader_of(probes_stream, otherwise=index)

                kill_server, restart_server = kill_probes_leader, cluster.restart

                def cluster_pids() -> dict[str, int | None]:
                    return {f"nats-server-{i}": srv.pid for i, srv in enumerate(cluster.servers)}

                server_pids = cluster_pids
                server_logs = [run_dir / f"nats-server-{i}.log" for i in range(cfg.nats_cluster)]
            else:
                server = stack.enter_context(
                    EmbeddedNats(log_file=str(run_dir / "nats-server.log"), config_file=str(config) if config else None)
                )
                url = server.url
                server_logs = [run_dir / "nats-server.log"]

                def one_pid() -> dict[str, int | None]:
                    return {"nats-server": server.pid}

                server_pids = one_pid

                def kill_one(_index: int) -> None:
                    server.kill()
                    return None

                def restart_one(_index: int) -> None:
                    server.start()  # same port, same store

                kill_server, restart_server = kill_one, restart_one
        console.print(f"[bold]nodeheal demo[/]: NATS {url} ({auth.mode}); logs in {run_dir}", highlight=False)
        progress.stage = "connecting to NATS"
        violations = ViolationCounter()
        settings = auth.settings("admin", url=url)
        try:  # nats-py retries a first connect forever; the demo says why it cannot start instead
            nc = await asyncio.wait_for(
                connect(settings, name="nodeheal-demo", error_cb=violations.callback("demo (admin)")),
                timeout=cfg.connect_timeout_s,
            )
        except TimeoutError:
            msg = f"no NATS server answered at {url} within {cfg.connect_timeout_s:g} s"
            raise RuntimeError(msg) from None
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        await apply_topology(js, settings.topology(), replicas=replicas)
        # looked up now, on a quiet server: after the probe shards start, a 50,000-node run's nats-server may not
        # answer a JetStream API request within nats-py's 5 s (the run failed at start on a 2-core machine)
        control = (
            await js.key_value(settings.topology().bucket(f"{settings.bucket_prefix}-control").name)
            if cfg.approve_replacements
            else None
        )
        spec = FleetSpec(nodes=cfg.nodes, seed=cfg.seed)
        timings = SimTimings(probe_interval_s=cfg.probe_interval_s)
        sim = FleetSimulator(spec=spec, settings=settings, timings=timings, work_dir=run_dir / "nodes")
        budgets = dict(DEFAULT_BUDGETS)
        if cfg.pool_budget is not None:  # the referee counts against the budget the remediator is given
            budgets["pool"] = (cfg.pool_budget, DEFAULT_BUDGETS["pool"][1])
        world = DemoWorld(sim=sim, timings=timings, region=spec.region, budgets=budgets)
        progress.sim, progress.world, progress.stage = sim, world, "starting the emulators"
        await stack.enter_async_context(world)
        add_launch_templates(world.ecs, region=spec.region, zone=sim.inventory[0].zone or f"{spec.region}-h")
        # the inventory as the inventory watcher writes it, as its role
        inventory_nc = await connect(
            auth.settings("inventory", url=url),
            name="nodeheal-demo-inventory",
            error_cb=violations.callback("inventory"),
        )
        inv_kv = await inventory_nc.jetstream().key_value(
            settings.topology().bucket(f"{settings.bucket_prefix}-inventory").name
        )
        await sim.publish_inventory(inv_kv)
        stack.push_async_callback(inventory_nc.close)  # kept: a replaced machine's record is written by it too
        run_start = datetime.now(tz=UTC)

        services = _service_table(
            settings=settings,
            cfg=cfg,
            world=world,
            run_dir=run_dir,
            cluster=spec.cluster,
            auth=auth,
            replicas=detectors,
        )
        # interrupted: the services had SIGTERM (or the terminal's SIGINT) and get a short grace
        stack.callback(lambda: stop_all(services, timeout_s=2.0 if progress.interrupted else 15.0))
        progress.stage = "starting the services"
        for svc in services:
            svc.start()
        shards: ProbeShards | None = None

        def all_pids() -> dict[str, int | None]:
            pids: dict[str, int | None] = {"demo": os.getpid(), **server_pids()}
            pids |= {svc.name: (svc.proc.pid if svc.proc is not None and svc.alive else None) for svc in services}
            if shards is not None:
                pids |= shards.pids()
            return pids

        meter = ProcessMeter(all_pids)
        progress.meter = meter

        async def sample_processes() -> None:
            while True:
                meter.sample()
                await asyncio.sleep(2.0)

        sampler = asyncio.create_task(sample_processes(), name="demo-process-meter")
        stack.push_async_callback(_cancel, sampler)
        # services read the whole inventory before they are ready: ~70 s at 50,000 nodes on 2 cores
        # (and a loaded machine can take a minute just to import them)
        await wait_ready(services, timeout_s=240.0 + cfg.nodes / 250)
        # from here on a service whose /healthz fails is restarted, as the kubelet does with deploy/'s probes
        chaos: Chaos | None = None
        liveness = Liveness(services, paused=lambda: chaos.busy if chaos is not None else set())
        liveness_task = asyncio.create_task(liveness.run(), name="demo-liveness")
        stack.push_async_callback(_cancel, liveness_task)
        # progress counts from the streams' positions: the demo's own connection subscribes to nothing
        # the fleet produces, so it can never be the slow consumer of a 50,000-node run
        topo = settings.topology()
        stream_meter = StreamMeter(js, [spec_.name for spec_ in topo.streams])
        counted = {
            "cloud": f"{settings.stream_prefix}CLOUD",
            "anomaly": f"{settings.stream_prefix}ANOMALIES",
            "diagnosis": f"{settings.stream_prefix}DIAGNOSES",
            "audit": f"{settings.stream_prefix}AUDIT",
        }
        counts: dict[str, int] = {}
        at_start = await stream_meter.mark()

        def update_counts(mark: Any) -> None:
            for kind, stream in counted.items():
                first = at_start.streams.get(stream, {}).get("last_seq", 0)
                counts[kind] = mark.streams.get(stream, {}).get("last_seq", first) - first

        prober_nc = await connect(
            auth.settings("prober", url=url), name="nodeheal-sim-prober", error_cb=violations.callback("prober")
        )
        stack.push_async_callback(prober_nc.close)
        agent_nc: dict[str, Any] = {}
        names = list(sim.nodes)
        shards_n = cfg.sim_processes or auto_sim_processes(nodes=cfg.nodes, interval_s=cfg.probe_interval_s)
        step = max(1, min(per_connection, -(-len(names) // shards_n)))
        agent_conns = 0
        chunks: list[tuple[NatsSettings, list[str]]] = []
        for index, start in enumerate(range(0, len(names), step)):
            chunk = names[start : start + step]
            agent_settings = auth.agent_settings(url=url, cluster=spec.cluster, nodes=chunk, index=index)
            chunks.append((agent_settings, chunk))
            conn = await connect(
                agent_settings, name=f"nodeheal-sim-agents-{index}", error_cb=violations.callback("agents")
            )
            stack.push_async_callback(conn.close)
            agent_nc.update(dict.fromkeys(chunk, conn))
            agent_conns += 1
        if shards_n > 1:
            # the probes of the nodes of every shards_n-th agent connection are published by one shard
            # process; this process keeps the world, the faults and the commands
            prober_settings = auth.settings("prober", url=url).model_dump()
            plans = [
                ShardPlan(
                    index=k,
                    spec=spec,
                    nodes={
                        n: node_state(sim.nodes[n]) for i, (_, c) in enumerate(chunks) if i % shards_n == k for n in c
                    },
                    interval_s=cfg.probe_interval_s,
                    settings=settings.model_dump(),
                    prober=prober_settings,
                    agents=[(a.model_dump(), c) for i, (a, c) in enumerate(chunks) if i % shards_n == k],
                    nice=cfg.shard_nice,
                    full_every=sim.agent_profile.full_every,
                )
                for k in range(min(shards_n, len(chunks)))
            ]
            shards = ProbeShards(plans)
            progress.shards = shards
            # interrupted: their latest counters are already in the partial report; do not wait long
            stack.callback(lambda: shards.stop(timeout_s=1.0 if progress.interrupted else 3.0) if shards else None)
            progress.stage = "starting the probe shards"
            await asyncio.to_thread(shards.wait_ready, timeout_s=180.0)
        await sim.start(prober_nc=prober_nc, agent_nc=agent_nc, shards=shards)
        stack.push_async_callback(sim.stop)

        async def connect_agent(node: str) -> Any:
            # a new machine's agent: its own user, minted as `natsauth.py mint-agent` mints a real node's
            index = 1_000_000 + len(rotation.joined)
            conn = await connect(
                auth.agent_settings(url=url, cluster=spec.cluster, nodes=[node], index=index),
                name=f"nodeheal-sim-agent-{index}",
                error_cb=violations.callback("agents"),
            )
            stack.push_async_callback(conn.close)
            return conn

        # machines released and created at the ECS emulator leave and join the fleet (sim/rotation.py);
        # with probe shards the shards own fixed nodes: a joined machine is probed by this process's world loop
        rotation = FleetRotation(
            sim=sim,
            ecs=world.ecs,
            kube=world.kube,
            inventory=inv_kv,
            connect_agent=connect_agent,
            domains=world.domains,
        )
        operator: DemoOperator | None = None
        if control is not None:
            operator = DemoOperator(
                js=js,
                control=control,
                stream=f"{settings.stream_prefix}AUDIT",
                subject=f"{settings.prefix}.audit.{escape_token(spec.cluster)}.*",
                since=run_start,
            )
            operator_task = asyncio.create_task(operator.run(), name="demo-operator")
            stack.push_async_callback(_cancel, operator_task)

        warmup_s = cfg.probe_interval_s * 3
        partition_at = cfg.duration_s * 0.35 if cfg.partition else None
        plan = plan_faults(
            duration_s=cfg.duration_s,
            faults_per_minute=cfg.faults_per_minute,
            seed=cfg.seed,
            partition_at_s=partition_at,
            # the machine-check crash first, while budgets and the disruption rate are free: its rotation is
            # shown end to end (later, the crash wave fills the rate and the racks' budgets, rightly)
            hardware_crash_at_s=cfg.duration_s * 0.03,
            zone_spike_at_s=cfg.duration_s * 0.45 if cfg.zone_spike else None,
        )
        t0 = time.time()
        fault_start = t0 + warmup_s
        fault_end = fault_start + injection_window_s(plan, cfg.duration_s)
        if cfg.chaos:
            chaos = Chaos(
                plan=plan_chaos(
                    seed=cfg.seed,
                    duration_s=cfg.duration_s,
                    services=[svc.name for svc in services],
                    servers=cfg.nats_cluster if cfg.nats_cluster >= 3 else (0 if cfg.nats_url else 1),
                ),
                services={svc.name: svc for svc in services},
                kill_server=kill_server,
                restart_server=restart_server,
            )
            chaos_task = asyncio.create_task(chaos.run(start=fault_start))
            stack.push_async_callback(_cancel, chaos_task)
        next_fault = 0
        flow_start: Any = None
        next_count = 0.0
        live = Live(console=console, refresh_per_second=2, transient=False) if not cfg.quiet else None
        if live is not None:
            live.start()
        try:
            while True:
                now = time.time()
                world.sample()
                await rotation.step()
                if now >= fault_start:
                    while next_fault < len(plan) and now >= fault_start + plan[next_fault].at_s:
                        sim.inject(plan[next_fault])
                        next_fault += 1
                phase = "warm-up" if now < fault_start else ("faults" if now < fault_end else "settling")
                progress.stage = f"running ({phase})"
                if now >= next_count:
                    next_count = now + 2.0
                    if flow_start is None and now >= fault_start:
                        flow_start = await stream_meter.mark()
                        update_counts(flow_start)
                    else:
                        update_counts(await stream_meter.mark(consumers=False))
                    if shards is not None:
                        shards.poll_progress()
                if shards is not None and shards.dead():
                    msg = f"probe shard(s) {shards.dead()} exited; the fleet's probes stopped"
                    raise RuntimeError(msg)
                for svc in services:
                    if (chaos is not None and svc.name in chaos.busy) or svc.name in liveness.restarting:
                        continue  # killed on purpose; chaos (or the liveness probe) starts it again
                    if not svc.alive:
                        msg = f"service {svc.name} died; last log lines ({svc.log_path}):\n{svc.tail()}"
                        raise RuntimeError(msg)
                if live is not None:
                    live.update(
                        _progress_table(
                            phase=phase,
                            elapsed=now - t0,
                            sim=sim,
                            counts=counts,
                            services=services,
                            live=shards.totals() if shards is not None else {},
                        )
                    )
                # with the demo operator, a machine that crashed on failing hardware and is still in the fleet
                # (its rotation under way, maybe waiting for the budgets or the rate) keeps the run going
                rotating = operator is not None and (
                    operator.busy()
                    or any(f.node in sim.nodes for f in sim.truth if f.kernel_class in HARDWARE_CRASH_CLASSES)
                )
                settled = (
                    not sim.open_faults and not rotating and not verifying(sim.boots, world.kube.cordoned_nodes(), now)
                )
                if now >= fault_end and (settled or now >= fault_end + cfg.settle_s):
                    break
                await asyncio.sleep(0.5)
        finally:
            if live is not None:
                live.stop()
        # let the last verifications and resolutions land
        await asyncio.sleep(cfg.probe_interval_s * 2)
        run_end = datetime.now(tz=UTC) + timedelta(seconds=1)
        # the window ends a second from now: wait for it, so the report's read (and the emulators' logs below)
        # holds everything stored up to run_end, as `nodeheal replay --until <run end>` will read it later
        # (before, a repair verified in that second was in the replay and not in the report)
        await asyncio.sleep(max(0.0, (run_end - datetime.now(tz=UTC)).total_seconds()) + 0.05)
        flow_end = await stream_meter.mark()
        if flow_start is None:
            flow_start = at_start
        meter.sample()
        if shards is not None:
            await asyncio.to_thread(_stop_shards, shards, sim)
        progress.stage = "reading the streams for the report"
        # the side effects up to the end of the window the streams are read for (the services keep running
        # while the report is built; what they do after run_end has its intent after the window too)
        world_log = WorldLog(
            ecs_calls=list(world.ecs.calls),
            ecs_changes=list(world.ecs_changes),
            ecs_events=list(world.ecs.events.values()),
            instance_node={
                iid: inst.instance_name for iid, inst in {**world.ecs.released, **world.ecs.instances}.items()
            },
            kube_effects=list(world.kube.effects),
            node_commands=sim.executed_commands(),
            boots=list(sim.boots),
            dark=dict(sim.dark_spans),
            disruptions=list(world.disruptions),
        )
        world_log.node_domains, world_log.domain_limits = world.domain_limits({n for _, n, _ in world.disruptions})
        # after an anomaly storm (a machine that could not keep up), reading every anomaly back would make
        # this process the largest of the run: then only the anomalies of the nodes that had faults
        anomalies_stream = f"{settings.stream_prefix}ANOMALIES"
        anomalies_in_window = flow_end.streams.get(anomalies_stream, {}).get("last_seq", 0) - at_start.streams.get(
            anomalies_stream, {}
        ).get("last_seq", 0)
        storm = anomalies_in_window > cfg.report_anomalies_limit
        anomaly_nodes = sorted({fault.node for fault in sim.truth}) if storm else None
        # the report reads the streams as an operator's tool would: with the read-only `reader` role
        reader = auth.settings("reader", url=url)
        reader_nc = await connect(reader, name="nodeheal-demo-reader", error_cb=violations.callback("demo (reader)"))
        stack.push_async_callback(reader_nc.close)
        messages, findings, read_retries = await _collect_with_retries(
            reader_nc.jetstream(), settings=reader, since=run_start, until=run_end, anomaly_nodes=anomaly_nodes
        )
        meter.sample()
        record = RunRecord(
            nodes=cfg.nodes,
            duration_s=cfg.duration_s,
            probe_interval_s=cfg.probe_interval_s,
            reboot_s=timings.reboot_s,
            run_start=run_start,
            run_end=run_end,
            truth=list(sim.truth),
            health=list(sim.stats.samples),
            world=world.summary(),
            sim_stats=_sim_section(sim, interval_s=cfg.probe_interval_s)
            | {"agent_connections": agent_conns, "sim_processes": shards_n},
            nats_url=url,
            bad_kernel=spec.bad_kernel,
        )
        record.extra["safety"] = judge(
            audit=[m for m in messages if isinstance(m, RemediationRecord)],
            world=world_log,
            truth=list(sim.truth),
            run_end=run_end.timestamp(),
            cloud=[m for m in messages if isinstance(m, CloudSystemEvent)],
        )
        record.extra["security"] = security_section(
            mode=auth.mode,
            describe=auth.describe() | {"agent_connections": agent_conns},
            server_logs=server_logs,
            callbacks=violations,
        )
        report = build_report(record, messages=messages, findings=findings)
        # lost faults and repeated side effects: judged in every run, the figures `--chaos` is held to
        report["chaos"] = {
            "enabled": chaos is not None,
            **(chaos.summary() if chaos is not None else {"kills": 0, "restarted": 0, "events": []}),
            **liveness.summary(),
            **lost_and_repeated(
                fault_rows=report["fault_rows"],
                world=world_log,
                truth=list(sim.truth),
                audit=[m for m in messages if isinstance(m, RemediationRecord)],
            ),
        }
        spike = [f for f in sim.truth if f.fault_class == "zone_crash"]
        found = [r for r in report["systematic_risks"] if r["dimension"] == "zone" and r["value"] == sim.spike_zone]
        report["zone_spike"] = {
            "zone": sim.spike_zone,
            "crashes": len(spike),
            "nodes": sorted({f.node for f in spike}),
            "found": bool(found) if spike else None,
            "found_as": sorted({f"{r['kind']} ({r['scope']})" for r in found}),
        }
        report["rotation"] = {
            **rotation.summary(),
            "approvals": (
                operator.summary()
                if operator is not None
                else {
                    "approved_by": None,
                    "note": "replacements wait for `nodeheal approve` (no --approve-replacements)",
                }
            ),
        }
        report["nats"] = {"servers": len(url.split(",")), "stream_replicas": replicas}
        meter.sample()  # the demo's own peak includes reading the streams and building the report
        processes = meter.section(limit_mb=cfg.memory_limit_mb)
        flow = rates(flow_start, flow_end)
        sim_section = report["run"]["simulator"]
        report["processes"] = processes
        report["scale"] = {
            "nodes": cfg.nodes,
            "probe_interval_s": cfg.probe_interval_s,
            "requested_nodes_per_s": round(cfg.nodes / cfg.probe_interval_s, 1),
            "sim_processes": shards_n,
            "shard_nice": cfg.shard_nice if shards_n > 1 else None,
            "detector_replicas": detectors,
            "report_anomalies": {
                "in_window": anomalies_in_window,
                "limit": cfg.report_anomalies_limit,
                "read": "all" if not storm else f"only the {len(anomaly_nodes or [])} nodes with injected faults",
                "retries_at_consumer_limit": read_retries,
            },
            "probe_partitions": settings.probe_partitions,
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "flow": flow,
            "fell_behind": fell_behind(
                interval_s=cfg.probe_interval_s, sim=sim_section, flow=flow, processes=processes
            ),
        }
        report["run_dir"] = str(run_dir)
        write_html(report, cfg.report_path)
        cfg.report_path.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        return report
