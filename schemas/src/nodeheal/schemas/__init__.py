"""nodeheal's shared contract: message models, subjects, stream and bucket definitions.

Every service imports this package and nothing of each other. It never imports a transport.
"""

from nodeheal.schemas.anomaly import Anomaly, AnomalyKind, AnomalySeverity, AnomalyStatus, Evidence
from nodeheal.schemas.audit import PolicyCheck, RemediationPhase, RemediationRecord
from nodeheal.schemas.base import Message, UtcDatetime, utcnow
from nodeheal.schemas.cloud import (
    TERMINAL_PHASES,
    AckOption,
    CloudAction,
    CloudCause,
    CloudPhase,
    CloudSystemEvent,
    cloud_event_message_id,
)
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.diagnosis import (
    DISRUPTIVE_ACTIONS,
    ActionName,
    CrashSignature,
    Diagnosis,
    FleetCorrelation,
    RecommendedAction,
)
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.ids import (
    ActionId,
    ClusterName,
    InstanceId,
    MessageId,
    NodeName,
    deterministic_id,
    new_id,
)
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.kernel import (
    DEFAULT_CATEGORY,
    KERNEL_LOG_CLASSES,
    LOOKBACK_CLASSES,
    Category,
    KernelLogClass,
)
from nodeheal.schemas.probe import (
    MAX_KERNEL_LINES,
    FileHandles,
    FileSystem,
    LoadAverage,
    NodeProbe,
    Reachability,
    ServiceState,
)
from nodeheal.schemas.prober import ProberResult, ProberResults
from nodeheal.schemas.streams import BucketSpec, StreamSpec, Topology, topology

__all__ = [
    "DEFAULT_CATEGORY",
    "DISRUPTIVE_ACTIONS",
    "KERNEL_LOG_CLASSES",
    "LOOKBACK_CLASSES",
    "MAX_KERNEL_LINES",
    "TERMINAL_PHASES",
    "AckOption",
    "ActionId",
    "ActionName",
    "Anomaly",
    "AnomalyKind",
    "AnomalySeverity",
    "AnomalyStatus",
    "BucketSpec",
    "Category",
    "CloudAction",
    "CloudCause",
    "CloudPhase",
    "CloudSystemEvent",
    "ClusterName",
    "CrashSignature",
    "DeadLetter",
    "Diagnosis",
    "Evidence",
    "FileHandles",
    "FileSystem",
    "FleetCorrelation",
    "FleetFinding",
    "InstanceId",
    "KernelLogClass",
    "LoadAverage",
    "Message",
    "MessageId",
    "NodeCommand",
    "NodeCommandResult",
    "NodeInventory",
    "NodeName",
    "NodeProbe",
    "PolicyCheck",
    "ProberResult",
    "ProberResults",
    "Reachability",
    "RecommendedAction",
    "RemediationPhase",
    "RemediationRecord",
    "ServiceState",
    "StreamSpec",
    "Topology",
    "UtcDatetime",
    "cloud_event_message_id",
    "deterministic_id",
    "new_id",
    "topology",
    "utcnow",
]
