"""List and watch Kubernetes Nodes through the official `kubernetes` client.

The client is synchronous, so the list/watch loop runs in a worker thread and hands events to the
event loop. Raw JSON is used (`_preload_content=False`, `deserialize=False`): deserialising 50,000
`V1Node` models is slow and nothing here needs them.

Resumption: the watch continues from the last resourceVersion it saw after a disconnect or a
server-side timeout; an expired resourceVersion (410 Gone) leads to a fresh list, after which nodes
that vanished in between are removed (the `relisted` event carries every node name). This module
must never talk to NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("nodeheal.cloud_events.inventory.watcher")

EventType = Literal["ADDED", "MODIFIED", "DELETED", "RELISTED"]


@dataclass(frozen=True, slots=True)
class NodeEvent:
    type: EventType
    node: dict[str, Any] | None = None
    names: tuple[str, ...] = ()  # RELISTED: every node that exists now


def build_api_client(
    *,
    mode: str,
    kubeconfig: str | None = None,
    context: str | None = None,
    api_url: str | None = None,
    api_token: str | None = None,
    verify_tls: bool = True,
) -> client.ApiClient:
    if mode == "auto":
        mode = "in-cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else "kubeconfig"
    if mode == "url":
        if not api_url:
            msg = "kube_mode=url needs NODEHEAL_INVENTORY_API_URL (e.g. https://10.0.0.1:6443)"
            raise ValueError(msg)
        configuration = client.Configuration()
        configuration.host = api_url
        configuration.verify_ssl = verify_tls
        if api_token:
            configuration.api_key = {"authorization": api_token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)
    if mode == "in-cluster":
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context
    )
    return api_client


class NodeWatcher:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        watch_timeout_s: int = 300,
        read_timeout_s: float = 330.0,
        retry_backoff_s: float = 2.0,
    ) -> None:
        self.api = client.CoreV1Api(api_client)
        self.watch_timeout_s = watch_timeout_s
        self.read_timeout_s = read_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.resource_version: str | None = None
        self.relists = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._response: Any = None

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:  # unblock a read in progress
            with contextlib.suppress(Exception):
                response.shutdown()

    def run(self, emit: Callable[[NodeEvent], None]) -> None:
        """Blocking list/watch loop (run it in a thread); `emit` is called for every event."""
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list(emit)
                self._watch_once(emit)
            except ApiException as exc:
                if exc.status == 410:
                    log.info(
                        "watch expired (410 Gone): listing again", extra={"resource_version": self.resource_version}
                    )
                    self.resource_version = None
                    continue
                log.warning("Kubernetes API error, retrying", extra={"status": exc.status, "reason": exc.reason})
                self._stop.wait(self.retry_backoff_s)
            except Exception as exc:  # disconnects, read timeouts, DNS: resume from the last version
                self.reconnects += 1
                log.info("watch interrupted, resuming", extra={"error": repr(exc)[:300]})
                self._stop.wait(min(self.retry_backoff_s, 1.0))

    def _list(self, emit: Callable[[NodeEvent], None]) -> None:
        response = self.api.list_node(_preload_content=False, _request_timeout=(10, self.read_timeout_s))
        body = json.loads(response.data)  # type: ignore[attr-defined]
        items: list[dict[str, Any]] = body.get("items") or []
        # counted before its events go out: the loop that stores them runs on another thread, and what it
        # stored must never be seen before the list that produced it is counted
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or ""
        self.relists += 1
        for item in items:
            emit(NodeEvent(type="ADDED", node=item))
        names = tuple(str((i.get("metadata") or {}).get("name")) for i in items)
        emit(NodeEvent(type="RELISTED", names=names))

    def _watch_once(self, emit: Callable[[NodeEvent], None]) -> None:
        # The watch stream is read line by line here rather than through `watch.Watch().stream`:
        # with `deserialize=False` (needed to avoid building 50,000 V1Node models) the client's own
        # ERROR handling looks for a key it never set and a 410 Gone surfaces as a KeyError.
        kwargs: dict[str, Any] = {
            "watch": True,
            "timeout_seconds": self.watch_timeout_s,
            "allow_watch_bookmarks": True,
            "_preload_content": False,
            "_request_timeout": (10, self.read_timeout_s),
        }
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        response = self.api.list_node(**kwargs)
        self._response = response
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    break
                if not line or not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise ApiException(status=code, reason=f"{obj.get('reason')}: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    emit(NodeEvent(type=kind, node=obj))
        finally:
            self._response = None
            response.close()  # type: ignore[attr-defined]
            response.release_conn()  # type: ignore[attr-defined]


async def run_in_thread(watcher: NodeWatcher, queue: asyncio.Queue[NodeEvent]) -> None:
    """Run `watcher` in a worker thread, delivering its events into `queue` on this loop."""
    loop = asyncio.get_running_loop()

    def emit(event: NodeEvent) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(event), loop).result()

    try:
        await asyncio.to_thread(watcher.run, emit)
    finally:
        watcher.stop()
