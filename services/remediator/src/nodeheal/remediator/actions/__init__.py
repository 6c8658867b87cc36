"""The remediator's hands: Kubernetes (`kube`), the cloud (`cloud`) and the node agent (`node`).

Each action is idempotent where the world allows it and reports what it did as an `ActionOutcome`;
none of them decides whether it may run: that is policy's job, before the intent is audited.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    ok: bool
    detail: str
    unknown: bool = False
    """not ok, but the call may have taken effect: no answer came (a read timeout, a reply lost on the way back)"""
