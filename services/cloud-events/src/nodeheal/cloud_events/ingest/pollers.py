"""Pollers for the pull channels. Each turns what it reads into events with the pure normalizers and
hands them to the sink; a payload the normalizer refuses goes to the DLQ with the raw bytes and the
poller carries on; a transport failure is logged, counted and retried at the next interval.

- Alibaba: `DescribeInstanceHistoryEvents` with `InstanceEventCycleStatus` Inquiring / Scheduled /
  Executing (the default returns only finished events: reference §0.4), then a reconciliation: every
  event the ledger knows as open that is no longer active is queried by `EventId.N` to see it close, in
  the region whose scan listed it (`AlibabaHistoryPoller._reconcile`).
- Azure / AWS / GCE metadata: run on the node and speak for it (`node`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import prometheus_client

from nodeheal.cloud_events.ingest.settings import (
    AlibabaPollerSettings,
    AzurePollerSettings,
    GcePollerSettings,
    MetadataPollerSettings,
)
from nodeheal.cloud_events.ingest.sink import CloudEventSink
from nodeheal.cloud_events.normalize import (
    AzureDocumentTracker,
    GceMaintenanceTracker,
    NormalizeContext,
    PayloadError,
    TransitionLedger,
)
from nodeheal.cloud_events.normalize import alibaba as alibaba_norm
from nodeheal.cloud_events.normalize import aws as aws_norm
from nodeheal.schemas.cloud import CloudSystemEvent

log = logging.getLogger("nodeheal.cloud_events.ingest.pollers")

POLLS = prometheus_client.Counter("nodeheal_ingest_polls_total", "Poller rounds", ["poller", "outcome"])
POLLER_FAILING = prometheus_client.Gauge(
    "nodeheal_ingest_poller_failing",
    "1 while the poller's latest round failed (not a readiness condition: the push endpoints do not depend on it)",
    ["poller"],
)
POLLER_LAST_OK = prometheus_client.Gauge(
    "nodeheal_ingest_poller_last_success_timestamp_seconds",
    "Unix time of the poller's latest round that succeeded (0: none yet)",
    ["poller"],
)
OLDER_DOCUMENTS = prometheus_client.Counter(
    "nodeheal_ingest_azure_older_documents_total",
    "Azure Scheduled Events documents ignored: their DocumentIncarnation is below the newest the poller read",
)
ACTIVE_STATUSES = ["Inquiring", "Scheduled", "Executing"]
MAX_EVENT_IDS = 100
UNKNOWN_REGION_BACKOFF_ROUNDS = 64
"""An open event no polled region knows (another account's CMS push) is asked again after at most this many
rounds (64 x 60 s: about an hour)."""

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(tz=UTC)


class Poller(ABC):
    name: str

    def __init__(self, *, sink: CloudEventSink, cluster: str, interval_s: float, clock: Clock = _utcnow) -> None:
        self.sink = sink
        self.cluster = cluster
        self.interval_s = interval_s
        self.clock = clock
        self.rounds = 0
        self.last_error: str | None = None
        """Why the latest round failed (None once a round succeeds): `/status`, a metric and a log line; never
        readiness (the pod's push endpoints work while a poll is throttled or refused)."""
        self.last_ok_at: datetime | None = None

    def status(self) -> dict[str, object]:
        """What `/status` says of the poller."""
        return {
            "poller": self.name,
            "rounds": self.rounds,
            "failing": self.last_error is not None,
            "last_error": self.last_error,
            "last_ok_at": self.last_ok_at.isoformat() if self.last_ok_at else None,
        }

    @abstractmethod
    async def poll_once(self) -> list[CloudSystemEvent]:
        """One round: read, normalize, submit. Returns the events it saw."""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.round()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass

    async def round(self) -> None:
        """One round as `run` makes it: poll, then count and say how it went (never raises but on cancel)."""
        try:
            await self.poll_once()
            POLLS.labels(self.name, "ok").inc()
            POLLER_FAILING.labels(self.name).set(0)
            POLLER_LAST_OK.labels(self.name).set_to_current_time()
            self.last_error = None
            self.last_ok_at = _utcnow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            POLLS.labels(self.name, "error").inc()
            POLLER_FAILING.labels(self.name).set(1)
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("poll failed; retrying next interval", extra={"poller": self.name, "error": self.last_error})
        self.rounds += 1

    async def _refuse(self, exc: PayloadError, raw: bytes, where: str) -> None:
        log.warning("provider sent a payload we cannot read", extra={"poller": self.name, "error": str(exc)})
        await self.sink.reject(reason=f"payload: {exc}", raw=raw, where=where)


class AlibabaHistoryPoller(Poller):
    name = "alibaba"

    def __init__(
        self, *, sink: CloudEventSink, cluster: str, settings: AlibabaPollerSettings, clock: Clock = _utcnow
    ) -> None:
        super().__init__(sink=sink, cluster=cluster, interval_s=settings.interval_s, clock=clock)
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._round = 0
        self._region_of: dict[str, str] = {}
        """Open event → the region whose scan last listed it active (pruned to the ledger's open events)."""
        self._misses: dict[str, tuple[int, int]] = {}
        """Open event of no known region → (rounds every region was asked and none knew it, round it is due)."""

    def _client(self, region_id: str) -> Any:
        client = self._clients.get(region_id)
        if client is None:
            from alibabacloud_ecs20140526.client import Client
            from alibabacloud_tea_openapi.models import Config

            s = self.settings
            config = Config(
                access_key_id=s.access_key_id.get_secret_value() if s.access_key_id else None,
                access_key_secret=s.access_key_secret.get_secret_value() if s.access_key_secret else None,
                endpoint=s.endpoint,
                protocol=s.protocol,
                region_id=region_id,
                read_timeout=int(s.timeout_s * 1000),
                connect_timeout=int(s.timeout_s * 1000),
            )
            client = self._clients[region_id] = Client(config)
        return client

    async def _describe(self, region_id: str, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """The pages of DescribeInstanceHistoryEvents, one by one as each is read, as response bodies (SDK
        `to_map()` = the API's JSON). A page the API refuses (throttling) raises there: what the caller did with
        the pages before it stands."""
        from alibabacloud_ecs20140526 import models as ecs_models

        client = self._client(region_id)
        page = 1
        while True:
            request = ecs_models.DescribeInstanceHistoryEventsRequest(
                region_id=region_id, page_number=page, page_size=self.settings.page_size, **filters
            )
            pause = self.settings.throttle_backoff_s
            for attempt in range(self.settings.throttle_retries + 1):
                try:
                    response = await client.describe_instance_history_events_async(request)
                    break
                except Exception as exc:
                    # the API's flow control (`Throttling`, `Throttling.User`, …) passes in a moment: the page is
                    # asked again, a few times, before the round gives up on the pages from it on (a throttle met
                    # at the same page every round left the events of the pages after it unread for good)
                    if not str(getattr(exc, "code", "") or "").startswith("Throttling") or (
                        attempt == self.settings.throttle_retries
                    ):
                        raise
                    log.info("page throttled; asked again", extra={"region": region_id, "page": page, "wait_s": pause})
                    await asyncio.sleep(pause)
                    pause *= 2
            body = response.body.to_map()
            yield body
            total = int(body.get("TotalCount") or 0)
            if page * self.settings.page_size >= total:
                return
            page += 1

    async def _submit_pages(self, region_id: str, **filters: Any) -> list[CloudSystemEvent]:
        """Read, normalize and submit each page before the next is asked for. Before, a region's pages were
        submitted only once all were read: the API's flow control refusing page k threw away what pages
        1..k-1 gave, every round it hit there. The next round reads from page 1 again; what was published is
        a duplicate for the ledger (and for `Nats-Msg-Id`)."""
        seen: list[CloudSystemEvent] = []
        async for body in self._describe(region_id, **filters):
            events = await self._normalize_pages([body], region_id)
            await self.sink.submit(events)
            seen.extend(events)
        return seen

    async def _normalize_pages(self, pages: list[dict[str, Any]], region_id: str) -> list[CloudSystemEvent]:
        """Each page's events. A page with an item we cannot read is read item by item: that item goes to the
        DLQ with its reason, the others are kept (before, the whole page, up to 100 events of other instances,
        went to the DLQ, every round for as long as the bad item was listed)."""
        ctx = NormalizeContext(observed_at=self.clock(), cluster=self.cluster, region=region_id)
        events: list[CloudSystemEvent] = []
        where = f"poll alibaba {region_id}"
        for body in pages:
            try:
                events.extend(alibaba_norm.normalize_api(body, ctx))
                continue
            except ValueError as exc:  # a PayloadError, or a field the schema refuses (pydantic's ValidationError)
                error = exc if isinstance(exc, PayloadError) else PayloadError(str(exc), source="alibaba-api")
            items = _history_items(body)
            if items is None:  # not a page of events we can split: refused whole
                await self._refuse(error, json.dumps(body).encode(), where)
                continue
            for item in items:
                one = {**body, "InstanceSystemEventSet": {"InstanceSystemEventType": [item]}}
                try:
                    events.extend(alibaba_norm.normalize_api(one, ctx))
                except ValueError as exc:
                    bad = exc if isinstance(exc, PayloadError) else PayloadError(str(exc), source="alibaba-api")
                    await self._refuse(bad, json.dumps(item).encode(), where)
        return events

    async def poll_once(self) -> list[CloudSystemEvent]:
        """Scan every region's active events, then reconcile: each open event of the ledger no longer active is
        asked for by `EventId` in its own region only (`_reconcile`)."""
        self._round += 1
        seen: list[CloudSystemEvent] = []
        failed: list[str] = []
        active: dict[str, set[str]] = {}  # region → the ids of its complete scan
        for region_id in self.settings.region_ids:
            try:
                events = await self._submit_pages(region_id, instance_event_cycle_status=ACTIVE_STATUSES)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one region's failure (a RAM policy, throttling) does not stop the others
                log.warning("poll of a region failed", extra={"region": region_id, "error": repr(exc)})
                failed.append(f"{region_id}: {type(exc).__name__}: {exc}")
                continue
            seen.extend(events)
            active[region_id] = {e.provider_event_id for e in events}
            for event in events:
                self._region_of[event.provider_event_id] = region_id
                self._misses.pop(event.provider_event_id, None)
        seen.extend(await self._reconcile(active, failed))
        if failed:
            msg = f"{len(failed)} of {len(self.settings.region_ids)} region(s) failed: " + "; ".join(failed)
            raise RuntimeError(msg)  # counted and said as a failed poll; the other regions were polled
        return seen

    async def _reconcile(self, active: dict[str, set[str]], failed: list[str]) -> list[CloudSystemEvent]:
        """Ask for the open events no scan listed as active, by `EventId` with the default status filter (the
        finished states, reference §6.4), each in its own region: the one whose scan last listed it. Only after
        that region's scan was complete (an event missing from an incomplete scan is not taken for closed).

        An event whose region the poller does not know (a CMS push it never saw listed, the ledger seeded after a
        restart) is asked in every region scanned; once none knows it (another account's, a region not polled),
        it is asked again only after 2, 4, … up to `UNKNOWN_REGION_BACKOFF_ROUNDS` rounds. Before, every region
        was asked every round for every other region's open events, and for ever for those of accounts the
        poller does not cover: about R x O/100 extra calls a round, the likeliest to be throttled."""
        listed = set().union(*active.values()) if active else set()
        open_ids = [e for e in self.sink.ledger.open_events("alibaba") if e.startswith("e-")]
        still_open = set(open_ids)
        for memo in (self._region_of, self._misses):
            for gone in [e for e in memo if e not in still_open]:
                del memo[gone]
        by_region: dict[str, list[str]] = {region: [] for region in active}
        unknown: list[str] = []
        for eid in open_ids:
            if eid in listed:
                continue
            region = self._region_of.get(eid)
            if region is None:
                due = self._misses.get(eid, (0, 0))[1]
                if self._round >= due:
                    unknown.append(eid)
            elif region in by_region:
                by_region[region].append(eid)
            # else its region failed this round's scan (or is no longer polled): not asked
        seen: list[CloudSystemEvent] = []
        answered: set[str] = set()
        complete = not failed
        for region_id in active:
            ids = by_region[region_id] + unknown
            try:
                for start in range(0, len(ids), MAX_EVENT_IDS):
                    closed = await self._submit_pages(region_id, event_id=ids[start : start + MAX_EVENT_IDS])
                    seen.extend(closed)
                    answered.update(e.provider_event_id for e in closed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reconciliation of a region failed", extra={"region": region_id, "error": repr(exc)})
                failed.append(f"{region_id}: {type(exc).__name__}: {exc}")
                complete = False
        if complete:  # every region scanned and asked: an unknown event none answered is none of theirs
            for eid in unknown:
                if eid not in answered:
                    misses = self._misses.get(eid, (0, 0))[0] + 1
                    self._misses[eid] = (misses, self._round + min(2**misses, UNKNOWN_REGION_BACKOFF_ROUNDS))
        return seen


def _history_items(body: object) -> list[Any] | None:
    """The event items of a `DescribeInstanceHistoryEvents` page, or None when the page has no such list."""
    if not isinstance(body, dict):
        return None
    container = body.get("InstanceSystemEventSet")
    items = container.get("InstanceSystemEventType") if isinstance(container, dict) else None
    return items if isinstance(items, list) else None


class _MetadataPoller(Poller):
    tracker: Any = None  # a poller that keeps state across polls (Azure's document, GCE's current event)

    def __init__(
        self, *, sink: CloudEventSink, cluster: str, settings: MetadataPollerSettings, clock: Clock = _utcnow
    ) -> None:
        super().__init__(sink=sink, cluster=cluster, interval_s=settings.interval_s, clock=clock)
        if not settings.node:
            env = f"NODEHEAL_INGEST_{self.name.upper()}__NODE"
            msg = f"the {self.name} metadata poller needs the node it speaks for: set {env}"
            raise ValueError(msg)
        self.node: str = settings.node
        self.settings = settings
        self.instance_id: str | None = settings.instance_id
        self._session: aiohttp.ClientSession | None = None
        self._resumed = False

    def _resume_once(self, ctx: NormalizeContext) -> None:
        """At the first poll: take over the events the poller before this one (a restart of the process or of
        the VM) left open, from the ledger the ingest seeded from CLOUD (`seed_ledger`)."""
        if not self._resumed:
            self._take_over(self.sink.ledger, ctx)
            self._resumed = True

    def _take_over(self, ledger: TransitionLedger, ctx: NormalizeContext) -> None:
        """A poller whose tracker keeps events across polls hands it the open ones of its cloud."""

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(self, path: str, headers: dict[str, str]) -> bytes:
        session = await self._http()
        url = self.settings.endpoint.rstrip("/") + path
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                msg = f"GET {url} answered {response.status}: {body[:200]!r}"
                raise RuntimeError(msg)
            return body

    def _ctx(self) -> NormalizeContext:
        return NormalizeContext(
            observed_at=self.clock(), cluster=self.cluster, node=self.node, instance_id=self.instance_id or self.node
        )

    async def _submit(self, events: list[CloudSystemEvent]) -> None:
        await self.sink.submit(events, node=self.node)

    async def _submit_or_forget(self, events: list[CloudSystemEvent], before: Any) -> None:
        """Submit what the tracker made of this poll; when the submit fails (NATS away, the publish not
        acknowledged), put the tracker back as it was before the poll, so the next poll sees the same change
        and says it again. Before, the tracker had already moved on (an Azure event that disappeared was
        popped, GCE's current event set or cleared): the `canceled` / `completed` / `in_progress` was lost
        for good."""
        try:
            await self._submit(events)
        except BaseException:
            self.tracker = before
            raise


class AzureScheduledEventsPoller(_MetadataPoller):
    name = "azure"
    tracker: AzureDocumentTracker

    def __init__(
        self, *, sink: CloudEventSink, cluster: str, settings: AzurePollerSettings, clock: Clock = _utcnow
    ) -> None:
        super().__init__(sink=sink, cluster=cluster, settings=settings, clock=clock)
        self.azure = settings
        self.tracker = AzureDocumentTracker(resource=settings.vm_name or settings.instance_id or self.node)
        self._named = bool(settings.vm_name or settings.instance_id)
        self._older_logged = False

    def _take_over(self, ledger: TransitionLedger, ctx: NormalizeContext) -> None:
        resource = self.tracker.resource
        incarnation = ledger.incarnation("azure", resource) if resource else None
        self.tracker.resume(ledger.open_reports("azure"), ctx, incarnation=incarnation)

    async def _vm_name(self) -> None:
        """The name Azure lists in an event's `Resources` is the VM's (a scale set's `<vmss>_<n>`), which on AKS
        is not the Kubernetes node name (`…-vmss000003`): with no `VM_NAME` configured, ask IMDS for it once
        (before, the node name was used and every event of the VM was taken for another VM's, and dropped)."""
        self._named = True
        try:
            name = (
                (
                    await self._get(
                        "/metadata/instance/compute/name?api-version=2021-02-01&format=text", {"Metadata": "true"}
                    )
                )
                .decode()
                .strip()
            )
        except Exception as exc:  # an IMDS without the endpoint: the node name, as configured before
            log.warning(
                "Azure VM name not read from IMDS; matching events on the node name (set AZURE__VM_NAME)",
                extra={"node": self.node, "error": repr(exc)},
            )
            return
        if name:
            self.tracker.resource = name

    async def poll_once(self) -> list[CloudSystemEvent]:
        if not self._named:
            await self._vm_name()
        raw = await self._get(f"/metadata/scheduledevents?api-version={self.azure.api_version}", {"Metadata": "true"})
        ctx = self._ctx()
        self._resume_once(ctx)  # after `_vm_name`: the events taken over are this VM's
        before = copy.deepcopy(self.tracker)
        try:
            document = json.loads(raw)
            events = self.tracker.feed(document, ctx)
        except ValueError as exc:
            self.tracker = before
            error = exc if isinstance(exc, PayloadError) else PayloadError(f"not JSON: {exc}", source="azure-imds")
            await self._refuse(error, raw, f"poll azure {self.node}")
            return []
        if self.tracker.older_documents > before.older_documents:
            OLDER_DOCUMENTS.inc()
            if not self._older_logged:  # once per poller: a lagging relay would say it every poll
                self._older_logged = True
                log.warning(
                    "Azure document older than one already read ignored (counted in "
                    "nodeheal_ingest_azure_older_documents_total; logged once)",
                    extra={"node": self.node, "incarnation": self.tracker.incarnation},
                )
        await self._submit_or_forget(events, before)
        return events


class AwsScheduledEventsPoller(_MetadataPoller):
    name = "aws"
    TOKEN_TTL_S = 21_600

    async def _token(self) -> str:
        session = await self._http()
        url = self.settings.endpoint.rstrip("/") + "/latest/api/token"
        async with session.put(url, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL_S)}) as resp:
            body = await resp.text()
            if resp.status != 200:
                msg = f"PUT {url} (IMDSv2 token) answered {resp.status}: {body[:200]!r}"
                raise RuntimeError(msg)
            return body.strip()

    async def poll_once(self) -> list[CloudSystemEvent]:
        headers = {"X-aws-ec2-metadata-token": await self._token()}
        if self.instance_id is None:
            self.instance_id = (await self._get("/latest/meta-data/instance-id", headers)).decode().strip()
        events: list[CloudSystemEvent] = []
        # `scheduled` lists the active events; a completed or canceled one moves to `history` (the EC2 user
        # guide's instance metadata categories), so an event that ended is read there: before, a canceled
        # system-reboot just left `scheduled`, CLOUD kept it pending and the node stayed drained for it
        for kind in ("scheduled", "history"):
            raw = await self._get_or_none(f"/latest/meta-data/events/maintenance/{kind}", headers)
            if raw is None:  # no such category yet (nothing has ended on this instance)
                continue
            try:
                events += aws_norm.normalize_imds(json.loads(raw) if raw.strip() else [], self._ctx())
            except ValueError as exc:
                error = exc if isinstance(exc, PayloadError) else PayloadError(f"not JSON: {exc}", source="aws-imds")
                await self._refuse(error, raw, f"poll aws {self.node} {kind}")
        await self._submit(events)
        return events

    async def _get_or_none(self, path: str, headers: dict[str, str]) -> bytes | None:
        """The category's body, or None when the metadata service has no such category (404)."""
        session = await self._http()
        url = self.settings.endpoint.rstrip("/") + path
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            if response.status == 404:
                return None
            if response.status != 200:
                msg = f"GET {url} answered {response.status}: {body[:200]!r}"
                raise RuntimeError(msg)
            return body


class GceMaintenancePoller(_MetadataPoller):
    name = "gce"
    tracker: GceMaintenanceTracker

    def __init__(
        self, *, sink: CloudEventSink, cluster: str, settings: GcePollerSettings, clock: Clock = _utcnow
    ) -> None:
        super().__init__(sink=sink, cluster=cluster, settings=settings, clock=clock)
        self.tracker = GceMaintenanceTracker()

    def _take_over(self, ledger: TransitionLedger, ctx: NormalizeContext) -> None:
        self.tracker.resume(ledger.open_events("gcp"), ctx)
        # a VM recreated under the node's name (new numeric id): the old VM's open episodes on this node end
        self.tracker.close_others(ledger.open_routes("gcp"), ctx)

    async def poll_once(self) -> list[CloudSystemEvent]:
        headers = {"Metadata-Flavor": "Google"}
        if self.instance_id is None:
            self.instance_id = (await self._get("/computeMetadata/v1/instance/id", headers)).decode().strip()
        raw = await self._get("/computeMetadata/v1/instance/maintenance-event", headers)
        ctx = self._ctx()
        self._resume_once(ctx)  # a restart continues the event the last poller left open (seeded ledger)
        before = copy.deepcopy(self.tracker)
        try:
            events = self.tracker.feed(raw.decode("utf-8", errors="replace"), ctx)
        except ValueError as exc:  # a PayloadError, or a field the schema refuses (pydantic's ValidationError)
            self.tracker = before
            error = exc if isinstance(exc, PayloadError) else PayloadError(str(exc), source="gce-metadata")
            await self._refuse(error, raw, f"poll gce {self.node}")
            return []
        await self._submit_or_forget(events, before)
        return events
