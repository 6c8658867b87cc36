"""Verification after a fix: a fresh *full agent* probe that is healthy by the detector's own rules
(`nodeheal.schemas.health`: disk, inodes, file handles, load, services, read-only mounts), Node Ready from
the API server, and after a reboot / redeploy / host event a boot id different from the one before.

The probes are read from the PROBES stream (a named ephemeral pull consumer filtered to the node's
subject, starting at the action), which is what the remediator's NATS role allows (`_consume(PROBES)` in
deploy/nats/natsauth.py): no core subscription on probe subjects is needed. Prober and simulator probes
are skipped: they carry no disk, file-handle or service data; so are the agent's heartbeats (`full=False`,
sent between full probes): verification waits for a full probe newer than the action. The agent makes its
probe after a node command a full one; after a reboot its first probe is full; after a Kubernetes-only step
(cordon, drain) the node's next scheduled full probe comes within `full_every` intervals (30 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import ServiceUnavailableError
from pydantic import ValidationError

from nodeheal.remediator.actions.kube import KubeActions
from nodeheal.runtime.jetstream import close_reader
from nodeheal.schemas.health import AGENT_SOURCES, HealthThresholds, probe_problems, summary
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import probe_subject

log = logging.getLogger(__name__)

JsSub = JetStreamContext.PullSubscription


@dataclass(frozen=True, slots=True)
class VerifyOutcome:
    ok: bool
    detail: str
    boot_id: str | None = None


class Verifier:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        prefix: str,
        partitions: int,
        kube: KubeActions | None,
        thresholds: HealthThresholds,
        timeout_s: float,
        poll_s: float,
        readers: int = 48,
    ) -> None:
        """`readers`: the most probe readers (ephemeral consumers) open at once; a verification waits for
        one (each ladder holds at most one reader at a time, so the bound cannot deadlock)."""
        self.js = js
        self.readers = asyncio.Semaphore(readers)
        self.stream = stream
        self.prefix = prefix
        self.partitions = partitions  # the setting: used only when the stream cannot be looked up
        self._partitioned: bool | None = None  # what the stream itself says (read once)
        self.kube = kube
        self.thresholds = thresholds
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    async def _stored_partitioned(self) -> bool:
        """Whether PROBES stores a node's probes with a partition token appended (its subject transform),
        from the stream's own configuration, read once: a remediator whose partition setting differs from
        the stream's (the production overlay once set it for the detector only) would otherwise filter on
        subjects that never exist and no repair could be verified. The setting is the fallback when the
        stream cannot be looked up."""
        if self._partitioned is None:
            try:
                info = await self.js.stream_info(self.stream)
            except Exception as exc:
                log.warning("PROBES layout not read; using the partition setting", extra={"error": repr(exc)})
                return self.partitions > 0
            transform = info.config.subject_transform
            self._partitioned = transform is not None and "partition(" in (transform.dest or "")
        return self._partitioned

    async def _filter(self, cluster: str, node: str) -> str:
        subject = probe_subject(cluster, node, prefix=self.prefix)
        return f"{subject}.*" if await self._stored_partitioned() else subject

    async def _probes(self, cluster: str, node: str, since: datetime) -> JsSub:
        """A named ephemeral pull consumer on the node's probes from `since` (the form the remediator's role
        allows: `$JS.API.CONSUMER.CREATE.<PROBES>.<name>.<filter>`; it goes away when unsubscribed or idle)."""
        return await self.js.pull_subscribe(
            await self._filter(cluster, node),
            durable=None,
            stream=self.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=since,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
            ),
        )

    @staticmethod
    async def _next_agent_probe(sub: JsSub, timeout: float) -> NodeProbe | None:  # noqa: ASYNC109
        """The next agent probe within `timeout` (None when none came)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msgs = await sub.fetch(1, timeout=max(left, 0.05))
            except (TimeoutError, NatsTimeoutError):
                return None
            except ServiceUnavailableError:
                # JetStream 503 on a pull: in a cluster, the fresh consumer has no leader yet (seen right
                # after a redeploy in `nodeheal demo --chaos --nats-cluster 3`); not a verdict, try again
                await asyncio.sleep(min(0.2, max(left, 0.0)))
                continue
            for msg in msgs:
                with contextlib.suppress(ValidationError, ValueError):
                    probe = NodeProbe.model_validate_json(msg.data)
                    if probe.source in AGENT_SOURCES:
                        return probe

    async def latest_agent_probe(
        self, *, cluster: str, node: str, lookback_s: float = 120.0, wait_s: float = 1.0
    ) -> NodeProbe | None:
        """The newest agent probe of the node stored in the last `lookback_s` (for the boot id before an action)."""
        async with self.readers:
            return await self._latest_agent_probe(cluster=cluster, node=node, lookback_s=lookback_s, wait_s=wait_s)

    async def _latest_agent_probe(
        self, *, cluster: str, node: str, lookback_s: float, wait_s: float
    ) -> NodeProbe | None:
        since = datetime.now(tz=UTC) - timedelta(seconds=lookback_s)
        sub = await self._probes(cluster, node, since)
        latest: NodeProbe | None = None
        try:
            wait = wait_s
            while True:
                probe = await self._next_agent_probe(sub, wait)
                if probe is None:
                    break
                if latest is None or probe.time >= latest.time:
                    latest = probe
                wait = 0.2  # caught up quickly: stored probes come back to back
        finally:
            await close_reader(self.js, sub)
        return latest

    async def verify(
        self,
        *,
        cluster: str,
        node: str,
        since: datetime,
        timeout_s: float | None = None,
        old_boot_id: str | None = None,
        need_new_boot: bool = False,
    ) -> VerifyOutcome:
        """A healthy agent probe taken after `since` (with a new boot id when asked) and Node Ready."""
        async with self.readers:
            return await self._verify(
                cluster=cluster,
                node=node,
                since=since,
                limit=timeout_s or self.timeout_s,
                old_boot_id=old_boot_id,
                need_new_boot=need_new_boot,
            )

    async def _verify(
        self,
        *,
        cluster: str,
        node: str,
        since: datetime,
        limit: float,
        old_boot_id: str | None,
        need_new_boot: bool,
    ) -> VerifyOutcome:
        deadline = time.monotonic() + limit
        last = "no agent probe since the action"
        ready_detail = "Node Ready not checked"
        sub = await self._probes(cluster, node, since)
        try:
            while time.monotonic() < deadline:
                probe = await self._next_agent_probe(sub, max(min(self.poll_s, deadline - time.monotonic()), 0.01))
                if probe is None:
                    continue
                if probe.time < since:
                    continue
                if not probe.full:
                    if last == "no agent probe since the action":
                        last = "only heartbeats since the action, no full probe yet"
                    continue
                if need_new_boot and (probe.boot_id is None or probe.boot_id == old_boot_id):
                    last = f"boot id still {probe.boot_id or 'unknown'}: the node has not rebooted since the action"
                    continue
                problems = probe_problems(probe, self.thresholds)
                if problems:
                    last = summary(problems)
                    continue
                boot = f", new boot id {probe.boot_id}" if need_new_boot else ""
                if self.kube is None:
                    return VerifyOutcome(True, f"fresh healthy agent probe from {node}{boot}", probe.boot_id)
                try:
                    if await self.kube.node_ready(node):
                        return VerifyOutcome(
                            True, f"fresh healthy agent probe from {node}{boot} and Node Ready", probe.boot_id
                        )
                    ready_detail = "Node not Ready"
                except Exception as exc:
                    ready_detail = f"Node Ready unknown: {exc}"
                last = "healthy probe but " + ready_detail
        finally:
            await close_reader(self.js, sub)
        return VerifyOutcome(False, f"{node} not verified healthy within {limit:.0f}s: {last}; {ready_detail}")
