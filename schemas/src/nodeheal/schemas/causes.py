"""The vocabulary of `Diagnosis.cause`: specific cause names and their category.

The diagnoser names causes from this table (a kernel-log class name is also a valid cause, with the
category the knowledge base decides); the simulator's ground truth and the demo's accuracy figure
use the same names. Add a cause here before using it anywhere.
"""

from __future__ import annotations

from nodeheal.schemas.kernel import DEFAULT_CATEGORY, Category

KNOWN_CAUSES: dict[str, Category] = {
    # the node itself
    "node_crash": "hardware",  # went dark, no cloud event, peers fine, no partition (crash / power loss)
    "node_hang": "kernel",  # answers ping/TCP, but kubelet / SSH / agent are silent
    "unexplained_reboot": "unknown",  # boot id changed, nothing planned behind it
    "flapping_node": "unknown",  # repeatedly unhealthy and recovering
    # network
    "rack_partition": "network",  # many nodes of one rack unreachable at once
    "zone_partition": "network",
    "node_network_down": "network",  # this node unreachable, its agent still reports
    # cloud / planned operations
    "host_maintenance_reboot": "ops",
    "host_maintenance_redeploy": "ops",
    "host_maintenance_stop": "ops",
    "host_live_migration": "ops",
    "host_failure": "hardware",  # cloud-announced SystemFailure.* / unscheduled events
    "planned_reboot": "ops",
    "operator_request": "ops",  # `nodeheal batch`: a person asked for the ladder (cordon, drain, reboot, retire ...)
    # resources and software
    "high_load": "software",
    "disk_full": "software",
    "inode_exhaustion": "software",
    "fd_exhaustion": "software",
    "kubelet_down": "software",
    "container_runtime_down": "software",
    "ops_agent_down": "software",
    "agent_down": "software",  # our node agent is silent on a reachable node whose kubelet answers
    "service_down": "software",
    "node_not_ready": "software",
    # storage
    "disk_failure": "hardware",  # filesystem errors preceded by device I/O errors
    "filesystem_corruption": "kernel",  # filesystem errors without device I/O errors
    "readonly_filesystem": "kernel",
    # crash patterns (Intel's fleet crash triage, Linux Journal #222, 2012: different signatures on one host → hardware)
    "heterogeneous_crashes": "hardware",  # >= 2 different crash signatures on one host within the window
    "unknown": "unknown",
}

for _cls, _cat in DEFAULT_CATEGORY.items():
    KNOWN_CAUSES.setdefault(_cls, _cat)


def category_of(cause: str) -> Category:
    """The default category of a cause; `unknown` for a name not in the table."""
    return KNOWN_CAUSES.get(cause, "unknown")


OPERATOR_REQUEST = "operator_request"
"""The cause of a diagnosis published by `nodeheal batch`: not a fault, a person's request. The remediator
runs its ladder through every gate like any other, does not count the node as unhealthy for the storm
guard, and ends the ladder when the last step succeeded (no escalation unless a step failed)."""
