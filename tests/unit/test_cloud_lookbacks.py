"""Every service that rebuilds what it knows of host events at start reads all that CLOUD keeps: a host event
is announced once, up to weeks ahead (AWS about two weeks), and nothing more is published until its phase
changes, so a shorter read forgets an open event after a restart (the remediator's and the detector's read
it from the stream's first message; these two read a window that must cover the stream's max age)."""

from __future__ import annotations

from nodeheal.cloud_events.ingest.settings import IngestSettings
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.settings import NatsSettings


def test_the_start_up_reads_of_cloud_cover_all_the_stream_keeps() -> None:
    cloud = NatsSettings().topology().stream("CLOUD")
    assert DiagnoserSettings().rebuild_cloud_lookback_s >= cloud.max_age_s
    assert IngestSettings().ledger_seed_lookback_s >= cloud.max_age_s
