"""The prober's batches (`ResultBatcher`): what it sends is a valid `ProberResults`, one message per partition
of PROBES holding only that partition's nodes, at most `max_results` entries, on a subject the partition's
detector replica reads (the server-side placement itself is tested on a real server:
tests/integration/cloud_events/test_prober_nats.py)."""

from __future__ import annotations

import json

import pytest

from nodeheal.cloud_events.prober.batch import ResultBatcher
from nodeheal.schemas.prober import ProberResults
from nodeheal.schemas.subjects import (
    escape_token,
    fnv1a32,
    is_prober_results_token,
    probe_partition,
    prober_results_token,
    subject_partition,
)

CHECKS = [{"check": "tcp", "target": "10.0.0.1:10250", "ok": True, "latency_ms": 0.3}]


def test_fnv1a32_is_the_published_function() -> None:
    # the FNV-1a 32-bit reference values (the empty input is the offset basis)
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_every_batch_holds_the_nodes_of_one_partition_on_a_subject_that_hashes_to_it() -> None:
    batcher = ResultBatcher(cluster="prod-1", partitions=8, prefix="nodeheal", max_results=500, seq=7)
    nodes = [f"cn-hangzhou.10.0.{i // 250}.{i % 250}" for i in range(300)]
    full = [b for node in nodes for b in batcher.add(node, CHECKS, ready=True)]
    assert full == []  # 300 nodes over 8 partitions: no partition reached 500
    batches = batcher.drain()
    assert len(batcher) == 0
    assert 1 < len(batches) <= 8
    seen: list[str] = []
    for batch in batches:
        doc = ProberResults.model_validate_json(batch.body)  # the pydantic model accepts what the prober sends
        assert json.loads(batch.body)["id"] == batch.msg_id == doc.id
        assert doc.cluster == "prod-1" and doc.seq == 7 and doc.partitions == 8
        assert {probe_partition("prod-1", r.node, 8) for r in doc.results} == {doc.partition}
        token = batch.subject.rsplit(".", 1)[1]
        assert batch.subject == f"nodeheal.prober.prod-1.{token}" and token == doc.node
        assert is_prober_results_token(token)
        # the server stores the subject with partition(8,2,3) = FNV-1a(cluster token + node token) mod 8
        assert subject_partition(escape_token("prod-1"), token, 8) == doc.partition
        assert all(r.ready is True and r.reachability[0].latency_ms == 0.3 for r in doc.results)
        seen += [r.node for r in doc.results]
    assert sorted(seen) == sorted(nodes)


def test_a_partition_that_fills_up_goes_out_at_once_in_messages_of_at_most_max_results() -> None:
    batcher = ResultBatcher(cluster="c1", partitions=0, prefix="p", max_results=3)
    out = [b for i in range(7) for b in batcher.add(f"n{i}", CHECKS)]
    assert [b.results for b in out] == [3, 3]
    assert [b.results for b in batcher.drain()] == [1]
    assert {b.subject for b in out} == {"p.prober.c1._r0"}  # not partitioned: one routing token


def test_a_routing_token_is_never_the_escaping_of_a_node_name() -> None:
    for name in ("_r0", "_r12", "r0", "_R1", "a_r1"):
        assert not is_prober_results_token(escape_token(name))
    assert prober_results_token("c1", 3, 8) == prober_results_token("c1", 3, 8)
    with pytest.raises(ValueError, match="partition 8"):
        prober_results_token("c1", 8, 8)
