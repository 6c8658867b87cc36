"""Verification after a fix: fresh healthy probes from the node and Node Ready from the API server.

Only the probes of the node being verified are read (a core subscription on its probe subject, for
the duration of the check): cheap at fleet scale, and fresh by construction."""

from __future__ import annotations

import time
from datetime import datetime

from nats.aio.client import Client
from pydantic import ValidationError

from nodeheal.remediator.actions import ActionOutcome
from nodeheal.remediator.actions.kube import KubeActions
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import probe_subject


def probe_healthy(probe: NodeProbe, *, max_fs_used_pct: float = 95.0) -> tuple[bool, str]:
    """Is this probe a healthy node? (ready, services active, reachable, writable, room on disk)."""
    if probe.ready is False:
        return False, "node reports NotReady"
    bad_services = [s.name for s in probe.services if s.state != "active" or s.healthy is False]
    if bad_services:
        return False, f"services not active: {', '.join(bad_services)}"
    unreachable = [r.check for r in probe.reachability if not r.ok]
    if unreachable:
        return False, f"unreachable by {', '.join(unreachable)}"
    for fs in probe.filesystems:
        if fs.readonly:
            return False, f"{fs.mount} is read-only"
        if fs.used_pct >= max_fs_used_pct or fs.inodes_used_pct >= max_fs_used_pct:
            return False, f"{fs.mount} is {max(fs.used_pct, fs.inodes_used_pct):.0f}% full"
    if probe.file_handles and probe.file_handles.allocated >= 0.95 * probe.file_handles.max:
        return False, "file handles nearly exhausted"
    return True, "healthy"


class Verifier:
    def __init__(self, nc: Client, *, prefix: str, kube: KubeActions | None, timeout_s: float, poll_s: float) -> None:
        self.nc = nc
        self.prefix = prefix
        self.kube = kube
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    async def verify(
        self, *, cluster: str, node: str, since: datetime, timeout_s: float | None = None
    ) -> ActionOutcome:
        """Healthy probe newer than `since` and Node Ready, within the timeout."""
        sub = await self.nc.subscribe(probe_subject(cluster, node, prefix=self.prefix))
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        last_probe = "no probe since the action"
        probe_ok = False
        ready_detail = "Node Ready not checked"
        try:
            while time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=self.poll_s)
                except TimeoutError:
                    msg = None
                if msg is not None:
                    try:
                        probe = NodeProbe.model_validate_json(msg.data)
                    except ValidationError:
                        continue
                    if probe.time >= since:
                        probe_ok, last_probe = probe_healthy(probe)
                if not probe_ok:
                    continue
                if self.kube is None:
                    return ActionOutcome(ok=True, detail=f"fresh healthy probe from {node}")
                try:
                    if await self.kube.node_ready(node):
                        return ActionOutcome(ok=True, detail=f"fresh healthy probe from {node} and Node Ready")
                    ready_detail = "Node not Ready"
                except Exception as exc:
                    ready_detail = f"Node Ready unknown: {exc}"
        finally:
            await sub.unsubscribe()
        return ActionOutcome(
            ok=False,
            detail=f"{node} not healthy within {timeout_s or self.timeout_s:.0f}s: {last_probe}; {ready_detail}",
        )
