"""Which ingest a pod is (`NODEHEAL_INGEST_SCOPE`): the central one (fleet) or a node-local one (node)."""

from __future__ import annotations

from typing import Any

import pytest

from nodeheal.cloud_events.ingest.settings import IngestSettings


def settings(**values: Any) -> IngestSettings:
    return IngestSettings(allow_unauthenticated=True, **values)


def test_auto_is_node_local_when_a_metadata_poller_speaks_for_a_node_and_alibabas_is_off() -> None:
    assert not settings().node_scoped()
    node = settings(gce={"enabled": True, "node": "node-7"})
    assert node.node_scoped() and node.local_nodes() == ["node-7"]
    assert not settings(gce={"enabled": True, "node": "node-7"}, alibaba={"enabled": True}).node_scoped()
    assert not settings(gce={"enabled": True, "node": "node-7"}, scope="fleet").node_scoped()


def test_a_node_scope_without_its_node_or_with_the_alibaba_poller_is_refused() -> None:
    with pytest.raises(ValueError, match="scope node needs a metadata poller"):
        settings(scope="node")
    with pytest.raises(ValueError, match="Alibaba poller"):
        settings(scope="node", aws={"enabled": True, "node": "node-7"}, alibaba={"enabled": True})
