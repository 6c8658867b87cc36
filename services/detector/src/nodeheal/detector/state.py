"""Per-node detector state in plain `__slots__` classes (no pydantic per node: at 50,000 nodes the
difference is hundreds of megabytes and microseconds per probe).

A healthy node costs one `NodeState` and nothing else: conditions, cloud events and flap history are
created only when something is wrong. Times are float seconds since the epoch (UTC). This module must
never import the transport.
"""

from __future__ import annotations

from typing import Final

# Reachability checks as bits, so the prober's last verdict is two small ints per node.
REACH_BITS: Final[dict[str, int]] = {"icmp": 1, "tcp": 2, "ssh_banner": 4, "kubelet_healthz": 8, "agent": 16}
PING_MASK: Final = 1 | 2
SERVICE_MASK: Final = 4 | 8
KUBELET_BIT: Final = 8


class Condition:
    """One (kind, subject) on one node that is bad now or is firing."""

    __slots__ = (
        "bad",
        "detail",
        "expected",
        "firing",
        "good",
        "hold_until",
        "kind",
        "onset",
        "probe_ids",
        "severity",
        "stamp",
        "subject",
        "threshold",
        "value",
    )

    def __init__(self, *, kind: str, subject: str | None, onset: float, severity: str) -> None:
        self.kind = kind
        self.subject = subject
        self.onset = onset
        self.severity = severity
        self.bad = 0
        self.good = 0
        self.firing = False
        self.expected = False
        self.hold_until = 0.0
        self.stamp = 0
        self.value: float | str | bool | None = None
        self.threshold: float | None = None
        self.probe_ids: list[str] = []
        self.detail: dict[str, object] | None = None


class CloudEventState:
    """The newest phase seen of one provider event on this node."""

    __slots__ = ("action", "event_id", "fired_onset", "not_before", "phase", "terminal", "terminal_at")

    def __init__(self, *, event_id: str, action: str, phase: str, terminal: bool, not_before: float | None) -> None:
        self.event_id = event_id
        self.action = action
        self.phase = phase
        self.terminal = terminal
        self.not_before = not_before
        self.terminal_at = 0.0
        self.fired_onset = 0.0


class NodeState:
    __slots__ = (
        "agent_seq",
        "boot_id",
        "cloud",
        "cluster",
        "conds",
        "due",
        "flaps",
        "key",
        "last_agent",
        "last_agent_t",
        "last_full_t",
        "last_probe_id",
        "last_prober",
        "node",
        "reach_ok",
        "reach_seen",
        "remediation_until",
        "silence",
    )

    def __init__(self, *, key: str, cluster: str, node: str, now: float) -> None:
        self.key = key
        self.cluster = cluster
        self.node = node
        # Silence is counted from the first sighting: a node that never sent an agent probe is not
        # "down since 1970".
        self.last_agent = now
        self.last_agent_t = 0.0  # the `time` of its latest agent probe (the agent's clock); 0: none yet
        # the `time` of its latest full agent probe (the agent's clock), or of the first agent probe seen when no
        # full one has been yet; 0: no agent probe yet. The full-only conditions stand on that probe.
        self.last_full_t = 0.0
        self.last_prober = 0.0
        self.reach_ok = 0
        self.reach_seen = 0
        self.boot_id: str | None = None
        self.agent_seq = 0
        self.last_probe_id = ""
        self.conds: dict[str, Condition] | None = None
        self.cloud: dict[str, CloudEventState] | None = None
        self.flaps: dict[str, list[float]] | None = None
        self.silence: str | None = None
        self.remediation_until = 0.0
        self.due = 0.0
