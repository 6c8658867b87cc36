"""`ProberResults`: one message carrying the active prober's results for many nodes of one detector
partition (issue 19: a node's prober result was one stored message per node and round; in a batch it is
≈ 1/500 of one).

Each entry is what a single prober `NodeProbe` carried: the node, its reachability checks and the
Kubernetes `Ready` the prober saw in the inventory. The detector judges every entry exactly as it judged
one prober probe (docs/detector.md, "Prober results in batches").

Published on `<prefix>.prober.<cluster>.<token>` (`subjects.prober_results_subject`): the prober's own
subject kind, with a routing token `_r<k>` that is never the escaping of a node name, chosen so that the
server's partition hash of the subject (PROBES' subject transform) is the partition whose nodes the batch
carries. This module must never depend on the transport.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, Message, NonEmptyStr
from nodeheal.schemas.probe import Reachability

PROBER_RESULTS_SCHEMA: Final = "nodeheal.prober-results/v1"
MAX_PROBER_RESULTS: Final = 2000
"""The most entries one message may carry (the prober sends at most `batch_max_results`, 500 by default:
≈ 150 KB, well under the server's 1 MB payload limit)."""


class ProberResult(Frozen):
    """The prober's checks of one node, as one prober `NodeProbe` carried them."""

    node: NonEmptyStr
    reachability: tuple[Reachability, ...] = Field(min_length=1)
    ready: bool | None = Field(default=None, description="Kubernetes NodeReady as the prober saw it (inventory)")


class ProberResults(Message):
    """The results of one prober round for the nodes of one partition (or part of them: a round's results
    go out in messages of at most `batch_max_results` entries, and whatever was checked within
    `batch_flush_s`)."""

    schema_: Literal["nodeheal.prober-results/v1"] = Field(default=PROBER_RESULTS_SCHEMA, alias="schema")
    node: str = Field(
        min_length=1,
        max_length=253,
        description="the subject's routing token (`_r<k>`), not a node: the nodes are in `results`",
    )
    source: Literal["prober"] = "prober"
    seq: int = Field(ge=0, description="the prober's round number")
    partitions: int = Field(
        default=0, ge=0, le=1024, description="PROBES' partition count the prober placed this batch for (0: none)"
    )
    partition: int = Field(default=0, ge=0, le=1023, description="the partition every node of `results` is in")
    results: tuple[ProberResult, ...] = Field(min_length=1, max_length=MAX_PROBER_RESULTS)


def result_id(batch_id: str, index: int) -> str:
    """The id an entry stands under as evidence (`Anomaly.probe_ids`): the batch's id and its position."""
    return f"{batch_id}#{index}"
