"""A remediator under test: real nats-server (the conftest's, or one with the deployed per-role authorization:
`Deployed`), KubeWorld over HTTP, the real ECS SDK against the local emulator, and a node served by the real agent
code (`serving_node`, `real_agent_with_a_dead_kubelet`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig

from nodeheal.agent.app import NodeAgent
from nodeheal.agent.settings import AgentSettings, CleanSettings
from nodeheal.remediator.handlers import RemediatorService
from nodeheal.remediator.settings import CloudSettings, KubeSettings, PolicySettings, RemediatorSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.commands import NodeCommand
from nodeheal.schemas.diagnosis import ActionName, Diagnosis, RecommendedAction
from nodeheal.schemas.ids import deterministic_id, new_id
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.schemas.probe import FileHandles, FileSystem, LoadAverage, NodeProbe, ServiceState
from nodeheal.schemas.subjects import cloud_subject, cmd_subject, diagnosis_subject, probe_subject, wildcard
from nodeheal.sim.kube import KubeWorld
from nodeheal.sim.referee import WorldLog, budget_exceedances
from tests.integration.deploy.natsauth_loader import (
    agent_nats,
    mint_agent,
    mint_role,
    node_client,
    role_nats,
    violations,
)
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node, statvfs_with

CLUSTER = "c1"


def make_settings(
    nats: NatsSettings, *, kube_url: str | None, ecs_endpoint: str | None = None, instance: str = "r1", **policy: Any
) -> RemediatorSettings:
    return RemediatorSettings(
        nats=nats,
        cluster=CLUSTER,
        instance=instance,
        durable="remediator",
        ack_wait_s=3.0,
        retry_delay_s=0.5,
        verify_timeout_s=4.0,
        verify_poll_s=0.2,
        control_poll_s=0.2,
        node_command_timeout_s=5.0,
        policy=PolicySettings(**policy),
        kube=KubeSettings(
            enabled=kube_url is not None,
            api_url=kube_url,
            drain_timeout_s=3.0,
            eviction_backoff_initial_s=0.1,
            eviction_backoff_max_s=0.5,
        ),
        cloud=CloudSettings(
            provider="alibaba",
            alibaba_endpoint=ecs_endpoint,
            alibaba_protocol="http",
            alibaba_access_key_id="sim-access-key-id",
            alibaba_access_key_secret="sim-secret",
        ),
    )


def diagnosis(
    node: str,
    ladder: list[ActionName | tuple[ActionName, str]],
    *,
    age_s: float = 0.0,
    episode: str | None = None,
    category: str = "software",
    cause: str = "kubelet_down",
    confidence: float = 0.9,
    reason: str = "test",
    **kw: Any,
) -> Diagnosis:
    """A diagnosis of a fault episode of its own (or of `episode`: an update of the same fault)."""
    steps = [
        RecommendedAction(action=a, reason=reason)
        if isinstance(a, str)
        else RecommendedAction(action=a[0], target=a[1], reason=reason)
        for a in ladder
    ]
    return Diagnosis(
        cluster=CLUSTER,
        node=node,
        anomaly_ids=(episode or f"anomaly-{new_id()}",),
        category=category,
        cause=cause,
        confidence=confidence,
        recommended=tuple(steps),
        identified_at=datetime.now(tz=UTC) - timedelta(seconds=age_s),
        **kw,
    )


ROTATION: list[ActionName | tuple[ActionName, str]] = ["cordon", "drain", "retire", "replace"]


def mce_crash(node: str, ladder: list[ActionName | tuple[ActionName, str]] = ROTATION) -> Diagnosis:
    """A fatal machine check's diagnosis: by default the ladder that takes the machine out of the fleet."""
    return diagnosis(
        node, ladder, category="hardware", cause="mce_fatal_panic", confidence=0.95, reason="hardware crash bucket"
    )


async def publish_diagnosis(
    nc: Client, nats: NatsSettings, d: Diagnosis, headers: dict[str, str] | None = None
) -> None:
    await publish_model(
        nc.jetstream(),
        diagnosis_subject(d.cluster, d.node, prefix=nats.prefix),
        d,
        msg_id=deterministic_id(d.id, prefix="diag-"),
        headers=headers,
    )


async def short_leases(nc: Client, nats: NatsSettings, ttl: float = 2.0) -> None:
    """Make the lease bucket again with a short TTL: a killed holder's lease ages out in seconds, not minutes.
    With the topology's byte cap: the deployed account (deploy/nats/natsauth.py) refuses a bucket without one."""
    js = nc.jetstream()
    leases = f"{nats.bucket_prefix}-leases"
    cap = nats.topology().bucket(leases).max_bytes
    await js.delete_key_value(leases)
    await js.create_key_value(KeyValueConfig(bucket=leases, ttl=ttl, history=1, max_bytes=cap))


async def add_inventory(nc: Client, nats: NatsSettings, node: str, **kw: Any) -> None:
    kv = await nc.jetstream().key_value(f"{nats.bucket_prefix}-inventory")
    await kv.put(inventory_key(CLUSTER, node), NodeInventory(cluster=CLUSTER, node=node, **kw).to_json())


def agent_probe(
    node: str,
    *,
    healthy: bool = True,
    boot_id: str = "boot-1",
    disk_pct: float = 50.0,
    fd: int = 1000,
    load1: float = 0.5,
    kubelet: str | None = None,
    full: bool = True,
) -> NodeProbe:
    """What the real node agent sends (source agent): a full probe, every measurement present, or with
    `full=False` a heartbeat between two full ones (boot id, load, file handles; no disks, no services)."""
    common = {
        "cluster": CLUSTER,
        "node": node,
        "source": "agent",
        "seq": int(time.time() * 1000),
        "boot_id": boot_id,
        "load": LoadAverage(load1=load1, load5=load1, load15=load1),
        "cpu_count": 4,
        "file_handles": FileHandles(allocated=fd, max=100_000),
    }
    if not full:
        return NodeProbe(**common, full=False)  # type: ignore[arg-type]
    return NodeProbe(
        **common,  # type: ignore[arg-type]
        filesystems=(FileSystem(mount="/", used_pct=disk_pct, inodes_used_pct=10.0),),
        services=(ServiceState(name="kubelet", state=kubelet or ("active" if healthy else "failed")),),
    )


async def publish_probe(
    nc: Client, nats: NatsSettings, node: str, *, healthy: bool = True, boot_id: str = "boot-1", **kw: Any
) -> None:
    probe = agent_probe(node, healthy=healthy, boot_id=boot_id, **kw)
    await nc.jetstream().publish(probe_subject(CLUSTER, node, prefix=nats.prefix), probe.to_json())


class Probes:
    """A node's agent probes (what the real agent sends, `agent_probe`) every 0.2 s while the block runs.

    `boot_id` is the test's to change (the machine came back), or a callable read before each probe."""

    def __init__(
        self, nc: Client, nats: NatsSettings, node: str, *, boot_id: str | Callable[[], str] = "boot-1", **kw: Any
    ) -> None:
        self.nc, self.nats, self.node, self.kw = nc, nats, node, kw
        self.boot_id = boot_id
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Probes:
        async def loop() -> None:
            while not self.stop.is_set():
                boot = self.boot_id() if callable(self.boot_id) else self.boot_id
                # a probe whose PubAck is late on a loaded machine is one probe missed, as for the real agent
                # (whose outbox sends it later): the next goes out 0.2 s later; before, the whole loop died
                with contextlib.suppress(NatsTimeoutError):
                    await publish_probe(self.nc, self.nats, self.node, boot_id=boot, **self.kw)
                await asyncio.sleep(0.2)

        self.task = asyncio.create_task(loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


async def audit_records(nc: Client, nats: NatsSettings) -> list[RemediationRecord]:
    """Every AUDIT record, read again (up to three times) when a read times out on a loaded machine."""
    for attempt in range(3):
        try:
            return await _read_audit(nc, nats)
        except NatsTimeoutError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _read_audit(nc: Client, nats: NatsSettings) -> list[RemediationRecord]:
    js = nc.jetstream()
    stream = f"{nats.stream_prefix}AUDIT"
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    sub = await js.subscribe(
        wildcard("audit", prefix=nats.prefix),
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out: list[RemediationRecord] = []
    try:
        while len(out) < info.state.messages:
            msg = await sub.next_msg(timeout=5)
            out.append(RemediationRecord.model_validate_json(msg.data))
    finally:
        await sub.unsubscribe()
    return out


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, what: str = "condition") -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    late: NatsTimeoutError | None = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except NatsTimeoutError as exc:  # a NATS request late on a loaded machine: not yet, ask again
            late = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last NATS request: {late})" if late else ""))


async def wait_for_record(nc: Client, nats: NatsSettings, *, timeout: float = 20.0, **match: Any) -> RemediationRecord:  # noqa: ASYNC109
    found: list[RemediationRecord] = []

    async def check() -> bool:
        found[:] = [r for r in await audit_records(nc, nats) if all(getattr(r, k) == v for k, v in match.items())]
        return bool(found)

    await wait_for(check, timeout=timeout, what=f"audit record {match}")
    return found[0]


def remediator_env(nats: NatsSettings, **settings: str) -> dict[str, str]:
    """The environment of a `python -m nodeheal.remediator` process on the test's names: this environment
    without its own NODEHEAL_ variables, cluster c1, any free HTTP port, and `settings` as
    NODEHEAL_REMEDIATOR_<KEY> (e.g. `KUBE__API_URL=...`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEHEAL_")}
    env.update(
        {
            "NODEHEAL_REMEDIATOR_NATS__URL": nats.url,
            "NODEHEAL_REMEDIATOR_NATS__PREFIX": nats.prefix,
            "NODEHEAL_REMEDIATOR_NATS__STREAM_PREFIX": nats.stream_prefix,
            "NODEHEAL_REMEDIATOR_NATS__BUCKET_PREFIX": nats.bucket_prefix,
            "NODEHEAL_REMEDIATOR_CLUSTER": CLUSTER,
            "NODEHEAL_REMEDIATOR_HTTP_PORT": "0",
        }
    )
    env.update({f"NODEHEAL_REMEDIATOR_{key}": value for key, value in settings.items()})
    return env


async def start_service(settings: RemediatorSettings) -> RemediatorService:
    service = RemediatorService(settings)
    await service.start()
    return service


def judge_budgets(
    world: KubeWorld, records: list[RemediationRecord], *, pools: dict[str, str], limit: int
) -> dict[str, Any]:
    """The demo's referee on a test's evidence: the nodes cordoned at the Kubernetes emulator (its log of
    effects) minus the nodes AUDIT shows handed to a person, against a pool budget of `limit`.
    `pools`: node → its node pool."""
    log = WorldLog(
        ecs_calls=[],
        ecs_changes=[],
        ecs_events=[],
        instance_node={},
        kube_effects=[],
        node_commands=[],
        boots=[],
        dark={},
        disruptions=[(at, node, effect == "cordon") for at, node, effect in world.effects if "cordon" in effect],
        node_domains={node: [f"pool:{pool}"] for node, pool in pools.items()},
        domain_limits={f"pool:{pool}": limit for pool in set(pools.values())},
    )
    return budget_exceedances(log, records)


async def mirror_cloud(
    nc: Client, nats: NatsSettings, source: Callable[[], list[CloudSystemEvent]], stop: asyncio.Event
) -> None:
    """What the cloud-events poller does: normalize what the cloud shows, publish each transition once."""
    seen: set[str] = set()
    while not stop.is_set():
        for ev in source():
            if ev.dedup_id not in seen:
                seen.add(ev.dedup_id)
                await publish_model(
                    nc.jetstream(), cloud_subject(ev.cluster, ev.node, prefix=nats.prefix), ev, msg_id=ev.dedup_id
                )
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running(loop: Callable[[asyncio.Event], Awaitable[None]]) -> AsyncIterator[None]:
    """`loop(stop)` runs for the duration of the block."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(loop(stop))
    try:
        yield
    finally:
        stop.set()
        await task


def mirrored(
    nc: Client, nats: NatsSettings, source: Callable[[], list[CloudSystemEvent]]
) -> contextlib.AbstractAsyncContextManager[None]:
    return running(lambda stop: mirror_cloud(nc, nats, source, stop))


def real_agent_with_a_dead_kubelet(nats: NatsSettings, name: str, tmp_path: Path) -> tuple[FakeNode, AgentSettings]:
    """A fake node (kubelet failed, containerd active) and the real agent's settings for it: its systemctl, a state
    directory (the results and the lease fence survive a restart), probes every 0.2 s, no kernel log."""
    fake = make_fake_node(tmp_path, mounts=[("/dev/vda1", "/", "ext4", "rw,relatime")])
    fake.set_unit("kubelet.service", "failed", restarts=2)
    fake.set_unit("containerd.service", "active")
    settings = AgentSettings(
        nats=nats,
        cluster=CLUSTER,
        node_name=name,
        host_root=fake.root,
        services=["kubelet", "containerd"],
        systemctl_command=[fake.systemctl],
        state_dir=tmp_path / "agent-state",
        interval_s=0.2,
        kernel_log="off",
        clean=CleanSettings(allowed_dirs=["/var/log/pods"], image_prune_command=[]),
    )
    return fake, settings


@dataclass
class Deployed:
    """A nats-server with deploy/nats/natsauth.py's per-role authorization (`per_role_server`, the `deployed`
    fixture): the test drives and reads as `admin` (`nc`, `admin`: people's CLI, and the stand-in for the
    services not under test), the remediator runs with `remediator`'s settings, a node's agent with `agent(node)`'s."""

    directory: Path
    url: str
    nc: Client
    admin: NatsSettings

    @property
    def remediator(self) -> NatsSettings:
        """The settings the remediator is deployed with: its role's credential and inbox prefix."""
        return role_nats(self.directory, self.url, "remediator")

    def remediator_env(self) -> dict[str, str]:
        """The same as `NODEHEAL_REMEDIATOR_` settings for `remediator_env`."""
        role = self.remediator
        return {"NATS__CREDS_FILE": str(role.creds_file), "NATS__INBOX_PREFIX": role.inbox_prefix}

    def agent(self, node: str) -> NatsSettings:
        """A node agent's settings as deployed: the node's own credential, minted now, and the agent inbox prefix."""
        mint_agent(self.directory, CLUSTER, node)
        return agent_nats(self.directory, self.url, CLUSTER, node)

    @contextlib.asynccontextmanager
    async def agent_connection(self, node: str) -> AsyncIterator[Client]:
        """A connection as the node's agent makes it (its own credential, its node's inbox): for probes the test
        shapes itself (heartbeats only, then one full probe), sent where only that node may send them."""
        async with node_client(self.directory, self.url, "agent", CLUSTER, node) as client:
            yield client

    @contextlib.asynccontextmanager
    async def remediator_connection(self, name: str = "remediator") -> AsyncIterator[Client]:
        """A connection as the remediator makes it (its role's credential and inbox): for the remediator's parts
        a test drives directly (its node-command requester, leases, ledger)."""
        client = await connect(self.remediator, name=name)
        try:
            yield client
        finally:
            await client.close()

    def cli_creds(self, role: str = "admin") -> list[str]:
        """`--creds` for the CLI as an operator runs it (docs/cli.md): the `admin` credential for the commands that
        write (`batch`, `approve`, `pause`), `reader` for those that only read (`audit tail`, `replay`, `fleet`)."""
        return ["--creds", str(mint_role(self.directory, role))]

    def violations(self) -> list[str]:
        """The permission violations the server logged."""
        return violations(self.directory)


@dataclass
class CommandTap:
    """The node commands on the wire to one node, seen by an `admin` subscription beside the real agent (which
    answers them): what was asked, not what ran (the fake node's systemctl counts that)."""

    commands: list[NodeCommand] = field(default_factory=list)

    async def watch(self, nc: Client, node: str) -> CommandTap:
        async def seen(msg: Msg) -> None:
            self.commands.append(NodeCommand.model_validate_json(msg.data))

        await nc.subscribe(cmd_subject(CLUSTER, node), cb=seen)
        await nc.flush()
        return self


@contextlib.asynccontextmanager
async def serving_node(
    deployed: Deployed,
    node: str,
    tmp_path: Path,
    *,
    probes: bool = True,
    fail: bool = False,
    slow_s: float | None = None,
    healthy: bool = False,
) -> AsyncIterator[tuple[FakeNode, NodeAgent]]:
    """The node served by the real agent code under its own minted credential, on a fake node whose kubelet is
    dead (`real_agent_with_a_dead_kubelet`, in `tmp_path/node-<node>`): it answers the node's commands and, with
    `probes`, sends its probes every 0.2 s (they verify a restart). `fail`: the kubelet's restart fails at the
    node's systemctl; `slow_s`: a restart takes that long there; `healthy`: the kubelet runs (already repaired)."""
    fake, settings = real_agent_with_a_dead_kubelet(deployed.agent(node), node, tmp_path / f"node-{node}")
    if healthy:
        fake.set_unit("kubelet.service", "active")
    if fail:
        (fake.state / "kubelet.service.fail").write_text("")
    if slow_s is not None:
        (fake.state / "kubelet.service.slow").write_text(f"{slow_s:g}")
    agent = NodeAgent(settings, statvfs=statvfs_with({"root": (50, 10)}))  # type: ignore[arg-type]
    await agent.start()
    task = asyncio.create_task(agent.run_probes()) if probes else None
    try:
        yield fake, agent
    finally:
        await agent.stop()
        if task is not None:
            await task
