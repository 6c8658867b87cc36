"""The cumulative ack goes on the chunk's highest stream sequence, read from the ack subject (both forms)."""

from __future__ import annotations

from dataclasses import dataclass

from nodeheal.detector.puller import ack_sequences, highest, stream_seq


@dataclass
class Pulled:
    reply: str
    subject: str = "nodeheal.probe.c1.n1"
    data: bytes = b""
    headers: dict[str, str] | None = None


def test_the_stream_sequence_is_read_from_both_ack_subject_forms() -> None:
    assert stream_seq("$JS.ACK.PROBES.det.1.42.40.1700000000000000000.7") == 42
    assert stream_seq("$JS.ACK.hub.ACCHASH.PROBES.det.1.43.40.1700000000000000000.7.token") == 43
    assert stream_seq("_INBOX.abc") is None


def test_a_redelivered_probe_last_in_the_chunk_does_not_lower_the_ack() -> None:
    # a probe redelivered (delivery count 2) after newer ones: acking it would leave 41 and 42 unacknowledged
    chunk = [
        Pulled("$JS.ACK.PROBES.det.1.41.10.1.0"),
        Pulled("$JS.ACK.PROBES.det.1.42.11.1.0"),
        Pulled("$JS.ACK.PROBES.det.2.17.12.1.0"),
        Pulled(""),  # not a JetStream message (no reply): never the one acked
    ]
    top = highest(chunk)
    assert top is not None
    assert top.reply == "$JS.ACK.PROBES.det.1.42.11.1.0"
    assert highest([Pulled("")]) is None


def test_delivery_count_stream_and_consumer_sequences_are_read_from_both_forms() -> None:
    assert ack_sequences("$JS.ACK.PROBES.det.2.42.40.1700000000000000000.7") == (2, 42, 40)
    assert ack_sequences("$JS.ACK.hub.ACCHASH.PROBES.det.1.43.41.1700000000000000000.7.token") == (1, 43, 41)
    assert ack_sequences("_INBOX.abc") is None
