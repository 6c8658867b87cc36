"""`nodeheal bench`: the benchmarks of docs/BENCHMARKS.md, each printing one JSON object.

A click group: each benchmark is a subcommand (`nodeheal bench detector`, more to come).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from nodeheal.cli.common import nats_endpoint, require_sim, run

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def bench() -> None:
    """Measure nodeheal on this machine (numbers go to docs/BENCHMARKS.md)."""


@bench.command("detector")
@click.option("--nats-url", default=None, help="Use this NATS server (default: start an embedded one).")
@click.option("--nodes", type=click.IntRange(1, 1_000_000), default=20_000, show_default=True, help="Fleet size.")
@click.option(
    "--seconds", type=click.FloatRange(1, 3600), default=10.0, show_default=True, help="Length of the latency run."
)
@click.option(
    "--rounds", type=click.IntRange(1, 1000), default=10, show_default=True, help="Probes per node in the backlog."
)
@click.option(
    "--rate", type=click.FloatRange(10, 1_000_000), default=5000, show_default=True, help="Probes/s of the latency run."
)
@click.option(
    "--batch", type=click.IntRange(10, 10_000), default=1000, show_default=True, help="Probes per pull request."
)
@click.option("--raw-count", type=click.IntRange(1000, 10_000_000), default=200_000, show_default=True)
@click.option(
    "--insecure",
    is_flag=True,
    default=False,
    help="Plain TCP without credentials (default: the production configuration, TLS and per-role credentials, "
    "on a nats-server the bench starts).",
)
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def detector(
    nats_url: str | None,
    nodes: int,
    seconds: float,
    rounds: int,
    rate: float,
    batch: int,
    raw_count: int,
    insecure: bool,
    as_json: bool,
) -> None:
    """Detector throughput (probes/s), probe→anomaly latency (p50/p99), bytes per node, raw nats-py ceiling."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.detector import run_bench
    from nodeheal.sim.bench.secure import BenchAuth, production_server

    if nats_url and not insecure:
        msg = (
            "--nats-url measures that server as it is: add --insecure (plain, no credentials);"
            " the production configuration (TLS + per-role credentials) runs on the bench's own server"
        )
        raise click.UsageError(msg)

    def measure(url: str, auth: BenchAuth) -> dict[str, object]:
        if not as_json:
            click.echo(
                f"benchmarking the detector against {url} ({auth.config}): {nodes} nodes x {rounds} rounds ...",
                err=True,
            )
        return run(
            lambda: run_bench(
                url=url,
                nodes=nodes,
                seconds=seconds,
                rounds=rounds,
                rate=rate,
                batch=batch,
                raw_count=raw_count,
                auth=auth,
            )
        )

    if insecure:
        with nats_endpoint(nats_url, embedded=nats_url is None) as url:
            result = measure(url, BenchAuth())
    else:
        try:
            server = production_server()
            with server as (url, auth):
                result = measure(url, auth)
        except FileNotFoundError as exc:
            raise click.UsageError(str(exc)) from exc
    json.dump(result, sys.stdout, indent=None if as_json else 2)
    sys.stdout.write("\n")


@bench.command("agent")
@click.option("--probes", type=click.IntRange(100, 10_000_000), default=20_000, show_default=True)
@click.option("--nodes", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="Distinct nodes.")
@click.option("--fleet", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True)
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True)
@click.option(
    "--full-every",
    type=click.IntRange(1, 10_000),
    default=None,
    help="A full probe every this many probes, heartbeats between [default: the agent's, 30 s / interval].",
)
@click.option(
    "--shard",
    is_flag=True,
    default=False,
    help="Also measure one probe shard's whole cost per agent probe (schedule, collector, encoding, publish, TLS) "
    "against an embedded nats-server.",
)
@click.option(
    "--shard-nodes",
    type=click.IntRange(500, 200_000),
    default=25_000,
    show_default=True,
    help="Nodes of the measured shard (25,000: one of the two shards of a 50,000-node demo).",
)
@click.option("--shard-seconds", type=click.FloatRange(2, 600), default=15.0, show_default=True)
@click.option(
    "--insecure",
    is_flag=True,
    default=False,
    help="The shard's server without TLS and credentials (default: the production configuration).",
)
def agent(
    probes: int,
    nodes: int,
    fleet: int,
    interval: float,
    full_every: int | None,
    shard: bool,
    shard_nodes: int,
    shard_seconds: float,
    insecure: bool,
) -> None:
    """CPU per probe of the real node agent's collector inside the simulator (every probe full, heartbeats
    only, and the blend the agents send), and the cores a fleet needs; with --shard also one probe shard's
    whole cost per probe."""
    from nodeheal.sim.bench.agent import run_bench

    result = run_bench(nodes=nodes, probes=probes, fleet=fleet, interval_s=interval, full_every=full_every)
    if shard:
        from nodeheal.sim.bench.shard import run_shard_bench

        measured = run_shard_bench(nodes=shard_nodes, interval_s=interval, seconds=shard_seconds, insecure=insecure)
        us = measured["cpu_us_per_probe"]
        measured["fleet_cpu_cores"] = round(fleet / interval * us / 1e6, 2)
        result["shard"] = measured
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


@bench.command("wire")
@click.option("--nodes", type=click.IntRange(1, 100_000), default=5000, show_default=True, help="Distinct nodes.")
@click.option(
    "--probes", type=click.IntRange(1000, 10_000_000), default=30_000, show_default=True, help="Probes per variant."
)
@click.option(
    "--batch", type=click.IntRange(10, 10_000), default=1000, show_default=True, help="Probes per pull request."
)
@click.option(
    "--insecure",
    is_flag=True,
    default=False,
    help="Plain TCP without credentials (default: the production configuration, TLS and per-role credentials).",
)
@click.option(
    "--only",
    type=click.Choice(["with_nats_msg_id", "without_nats_msg_id"]),
    default=None,
    help="Measure one variant on a fresh server (default: both, one after the other).",
)
@click.option(
    "--fleet-seconds",
    type=click.FloatRange(1, 3600),
    default=None,
    help=(
        "Instead: run the simulator's probe traffic of --nodes nodes at a 5 s interval this long, drained by the "
        "detector's puller, the prober's results one message per node and then in ProberResults batches (PROBES in "
        "--partitions partitions); messages and server CPU per node-interval."
    ),
)
@click.option(
    "--prober-rounds",
    type=click.IntRange(1, 1000),
    default=None,
    help=(
        "Instead: store this many rounds of the simulated prober's results over --nodes nodes, one message per "
        "node and then 500 nodes per ProberResults message, drained with cumulative acks."
    ),
)
@click.option(
    "--partitions",
    type=click.IntRange(0, 1024),
    default=8,
    show_default=True,
    help="With --fleet-seconds: PROBES' partitions (the demo's layout at 50,000 nodes; a batch per partition).",
)
def wire(
    nodes: int,
    probes: int,
    batch: int,
    insecure: bool,
    only: str | None,
    fleet_seconds: float | None,
    prober_rounds: int | None,
    partitions: int,
) -> None:
    """nats-server CPU per agent probe: stored with/without Nats-Msg-Id, drained with per-probe or cumulative acks."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.secure import BenchAuth, production_server
    from nodeheal.sim.bench.wire import run_bench, run_fleet_bench, run_prober_bench
    from nodeheal.sim.embedded import EmbeddedNats, server_pid

    def measure(url: str, auth: BenchAuth) -> dict[str, object]:
        pid = server_pid(url)
        assert pid is not None, "the bench's own nats-server"
        if prober_rounds is not None:
            click.echo(
                f"measuring nats-server pid {pid} ({auth.config}): {nodes} nodes x {prober_rounds} ...", err=True
            )
            return run(
                lambda: run_prober_bench(
                    url=url, pid=pid, auth=auth, nodes=nodes, rounds=prober_rounds, per_message=500, batch=batch
                )
            )
        if fleet_seconds is not None:
            click.echo(
                f"measuring nats-server pid {pid} ({auth.config}): {nodes} nodes, {fleet_seconds} s ...", err=True
            )
            return run(
                lambda: run_fleet_bench(
                    url=url,
                    pid=pid,
                    auth=auth,
                    nodes=nodes,
                    interval_s=5.0,
                    seconds=fleet_seconds,
                    batch=batch,
                    partitions=partitions,
                )
            )
        click.echo(f"measuring nats-server pid {pid} ({auth.config}): {probes} probes per variant ...", err=True)
        return run(lambda: run_bench(url=url, pid=pid, auth=auth, nodes=nodes, count=probes, batch=batch, only=only))

    if insecure:
        with EmbeddedNats() as server:
            result = measure(server.url, BenchAuth())
    else:
        try:
            with production_server(roles=("admin", "detector")) as (url, auth):
                result = measure(url, auth)
        except FileNotFoundError as exc:
            raise click.UsageError(str(exc)) from exc
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


@bench.command("kb")
@click.option(
    "--corpus",
    "corpus_dir",
    default="tests/data/kb",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory with corpus.jsonl and benign.txt (the repository's tests/data/kb).",
)
@click.option(
    "--seconds", type=click.FloatRange(0.05, 60), default=2.0, show_default=True, help="Duration of each speed run."
)
@click.option(
    "--baseline-rules",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Another rules.yaml (e.g. an earlier commit's) to time against the current one in the same run.",
)
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def kb(corpus_dir: Path, seconds: float, baseline_rules: Path | None, as_json: bool) -> None:
    """The knowledge base on the real corpus: per-class precision/recall, confusion, buckets, filter speed."""
    from nodeheal.diagnoser.kb import KnowledgeBaseError
    from nodeheal.sim.bench.kb import CorpusError, run_bench

    if not as_json:
        click.echo(f"benchmarking the knowledge base on {corpus_dir} ...", err=True)
    try:
        result = run_bench(corpus_dir, seconds=seconds, baseline_rules=baseline_rules)
    except (CorpusError, KnowledgeBaseError) as exc:
        raise click.ClickException(str(exc)) from exc
    json.dump(result, sys.stdout, indent=None if as_json else 2, ensure_ascii=False)
    sys.stdout.write("\n")


def _storm_shape(command: F) -> F:
    """The storm's arrival options `bench diagnoser` and `bench remediator` share (the same storm feeds both)."""
    command = click.option("--seed", type=int, default=7, show_default=True)(command)
    command = click.option(
        "--resolve-every",
        type=click.IntRange(0, 1_000_000),
        default=10,
        show_default=True,
        help="Every N-th arrival also brings an earlier dark node back (0: none).",
    )(command)
    return click.option(
        "--spacing-ms", type=click.FloatRange(0, 60_000), default=20.0, show_default=True, help="Between arrivals."
    )(command)


def _print_with_profile(result: dict[str, Any], *, as_json: bool) -> None:
    """The result as JSON on stdout; a cProfile text goes to stderr, or stays in the JSON with --json."""
    text = result.pop("profile", None)
    if text and not as_json:
        click.echo(text, err=True)
    elif text:
        result["profile"] = text
    json.dump(result, sys.stdout, indent=None if as_json else 2)
    sys.stdout.write("\n")


@bench.command("diagnoser")
@click.option("--nodes", type=click.IntRange(10, 1_000_000), default=50_000, show_default=True, help="Fleet size.")
@click.option(
    "--storm",
    type=click.IntRange(1, 1_000_000),
    default=4000,
    show_default=True,
    help="node_down anomalies over the nodes of one zone (at most the zone's size).",
)
@_storm_shape
@click.option("--profile", is_flag=True, default=False, help="Add the cProfile top functions to the output.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def diagnoser(
    nodes: int, storm: int, spacing_ms: float, resolve_every: int, seed: int, profile: bool, as_json: bool
) -> None:
    """The diagnoser core under a silence storm: node_down anomalies/s and ms per anomaly (no NATS)."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.diagnoser import run_storm

    if not as_json:
        click.echo(f"benchmarking the diagnoser: {storm} node_down over one zone of {nodes} nodes ...", err=True)
    result = run_storm(
        nodes=nodes, storm=storm, spacing_ms=spacing_ms, resolve_every=resolve_every, seed=seed, profile=profile
    )
    _print_with_profile(result, as_json=as_json)


@bench.command("remediator")
@click.option("--nodes", type=click.IntRange(10, 1_000_000), default=50_000, show_default=True, help="Fleet size.")
@click.option(
    "--storm",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="node_down anomalies over one zone, as in `bench diagnoser --storm`; their diagnoses are the input.",
)
@_storm_shape
@click.option(
    "--verify-timeout-s",
    type=click.FloatRange(0.01, 60),
    default=0.05,
    show_default=True,
    help="How long a verification polls PROBES (no probe arrives in the bench).",
)
@click.option("--profile", is_flag=True, default=False, help="Add the cProfile top functions to the output.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def remediator(
    nodes: int,
    storm: int,
    spacing_ms: float,
    resolve_every: int,
    seed: int,
    verify_timeout_s: float,
    profile: bool,
    as_json: bool,
) -> None:
    """The remediator under a silence storm's diagnoses, on an embedded nats-server: ms and CPU per diagnosis."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.remediator import run_storm

    if not as_json:
        click.echo(f"benchmarking the remediator: the diagnoses of {storm} node_down over one zone ...", err=True)
    result = run_storm(
        nodes=nodes,
        storm=storm,
        spacing_ms=spacing_ms,
        resolve_every=resolve_every,
        seed=seed,
        verify_timeout_s=verify_timeout_s,
        profile=profile,
    )
    _print_with_profile(result, as_json=as_json)


@bench.command("cloud-read")
@click.option(
    "--messages",
    type=click.IntRange(1, 5_000_000),
    default=200_000,
    show_default=True,
    help="Cloud events in CLOUD (the deploy's 64 GiB store caps CLOUD at 3.2 GiB: ~2.4 million of this size).",
)
@click.option("--nodes", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True, help="Fleet size.")
@click.option(
    "--host-share",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Share of host events (reboot notices); the rest are instance state changes.",
)
@click.option("--repeat", type=click.IntRange(1, 50), default=5, show_default=True, help="Reads timed (median).")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def cloud_read(messages: int, nodes: int, host_share: float, repeat: int, as_json: bool) -> None:
    """A service start's read of all of CLOUD, as the remediator's view does it: s and µs per message."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.cloud_read import run_cloud_read

    if not as_json:
        click.echo(f"benchmarking the start-up read of CLOUD: {messages} cloud events ...", err=True)
    result = run_cloud_read(messages=messages, nodes=nodes, host_share=host_share, repeat=repeat)
    _print_with_profile(result, as_json=as_json)


@bench.command("inventory")
@click.option("--nodes", type=click.IntRange(1, 1_000_000), default=5_000, show_default=True, help="Nodes listed.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def inventory(nodes: int, as_json: bool) -> None:
    """The inventory watcher's first list (one record at a time and as it writes now), a restarted watcher's list
    (without and with reading the bucket first: seconds and bucket updates) and a service's inventory load (per-key
    get and one watch)."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.inventory import run_inventory

    def say(stage: str) -> None:
        if not as_json:
            click.echo(f"  {stage} ...", err=True)

    if not as_json:
        click.echo(f"benchmarking the inventory watcher and store with {nodes} nodes:", err=True)
    _print_with_profile(run_inventory(nodes=nodes, progress=say), as_json=as_json)


@bench.command("audit-read")
@click.option(
    "--records", type=click.IntRange(1, 10_000_000), default=20_000, show_default=True, help="Records in AUDIT."
)
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True, help="Reads of each kind.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def audit_read(records: int, rounds: int, as_json: bool) -> None:
    """A durable `audit tail --durable NAME` read of AUDIT, before (acknowledgements left in the client's buffer,
    the read's end waiting on its own) and now, alternated in one run: seconds, records/s, reads that waited."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.audit_read import run_audit_read

    if not as_json:
        click.echo(f"benchmarking durable reads of {records} audit records, {rounds} of each kind ...", err=True)
    _print_with_profile(run_audit_read(records=records, rounds=rounds), as_json=as_json)


@bench.command("detector-storm")
@click.option(
    "--nodes", type=click.IntRange(10, 1_000_000), default=25_000, show_default=True, help="Nodes that fall silent."
)
@click.option("--timeout-s", type=click.FloatRange(1, 3600), default=300.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, default=False, help="Print only the JSON object.")
def detector_storm(nodes: int, timeout_s: float, as_json: bool) -> None:
    """How long a silence storm holds the detector's event loop (what a /healthz request waits)."""
    require_sim("nodeheal bench")
    from nodeheal.sim.bench.detector_storm import run_storm

    if not as_json:
        click.echo(f"benchmarking the detector: {nodes} nodes fall silent at once ...", err=True)
    result = run_storm(nodes=nodes, timeout_s=timeout_s)
    json.dump(result, sys.stdout, indent=None if as_json else 2)
    sys.stdout.write("\n")
