"""Pure normalizers: every cloud event channel → `CloudSystemEvent` (no NATS, no clock, no I/O).

`normalize(source, payload, ctx)` handles one decoded payload; `normalize_stream(source, raw, ctx)`
handles raw bytes that may hold several documents in order (JSON lines, a JSON array of Azure
documents, GCE values one per line) and diffs them, so Azure completions are synthesised.
Every failure is a `PayloadError` saying what was wrong and where.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from nodeheal.cloud_events.normalize import alibaba, aws, azure, gce
from nodeheal.cloud_events.normalize.azure import AzureDocumentTracker
from nodeheal.cloud_events.normalize.common import NormalizeContext
from nodeheal.cloud_events.normalize.errors import PayloadError
from nodeheal.cloud_events.normalize.gce import GceMaintenanceTracker
from nodeheal.cloud_events.normalize.ledger import TransitionLedger, Verdict
from nodeheal.schemas.cloud import CloudSystemEvent

SOURCES: Final = (
    "alibaba-cms",
    "alibaba-eventbridge",
    "alibaba-api",
    "aws-imds",
    "aws-api",
    "aws-eventbridge",
    "azure-imds",
    "gce-metadata",
)
AUTO: Final = "auto"

Normalizer = Callable[[object, NormalizeContext], list[CloudSystemEvent]]
_JSON_NORMALIZERS: dict[str, Normalizer] = {
    "alibaba-cms": alibaba.normalize_cms,
    "alibaba-eventbridge": alibaba.normalize_eventbridge,
    "alibaba-api": alibaba.normalize_api,
    "aws-imds": aws.normalize_imds,
    "aws-api": aws.normalize_api,
    "aws-eventbridge": aws.normalize_eventbridge,
    "azure-imds": azure.normalize_document,
}

__all__ = [
    "AUTO",
    "SOURCES",
    "AzureDocumentTracker",
    "GceMaintenanceTracker",
    "NormalizeContext",
    "PayloadError",
    "TransitionLedger",
    "Verdict",
    "decode_json",
    "detect_source",
    "normalize",
    "normalize_bytes",
    "normalize_stream",
]


def _check_source(source: str) -> None:
    if source not in SOURCES and source != AUTO:
        raise PayloadError(f"unknown source {source!r}; one of {', '.join((*SOURCES, AUTO))}", source=source)


def decode_json(raw: bytes, *, source: str) -> object:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    if not text.strip():
        raise PayloadError("empty body", source=source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", source=source) from None
    except RecursionError:
        raise PayloadError("JSON nested too deeply", source=source) from None


def detect_source(payload: object) -> str:
    """`auto`: tell the channel from the shape of a decoded payload (a str is a GCE metadata value)."""
    if isinstance(payload, str):
        return "gce-metadata"
    if isinstance(payload, list):
        first = payload[0] if payload else None
        if isinstance(first, dict):
            if "DocumentIncarnation" in first:
                return "azure-imds"
            if "specversion" in first:
                return "alibaba-eventbridge"
            if "detail-type" in first:
                return "aws-eventbridge"
            if "product" in first and "content" in first:
                return "alibaba-cms"
            if "InstanceEventId" in first:
                return "aws-api"
            if "Code" in first and ("State" in first or "EventId" in first):
                return "aws-imds"
        raise PayloadError("cannot tell the source of this JSON array; pass --source", source=AUTO)
    if isinstance(payload, dict):
        keys = payload.keys()
        if "DocumentIncarnation" in keys or "StartRequests" in keys:
            return "azure-imds"
        if "specversion" in keys:
            return "alibaba-eventbridge"
        if "detail-type" in keys:
            return "aws-eventbridge"
        if {"InstanceSystemEventSet", "InstanceFullStatusSet", "MaintenanceAttributes"} & keys:
            return "alibaba-api"
        if (
            "SystemEvents" in keys
            or ("product" in keys and "content" in keys)
            or ("name" in keys and "content" in keys)
        ):
            return "alibaba-cms"
        if {"InstanceStatuses", "InstanceEventId"} & keys or (
            isinstance(payload.get("Events"), list) and "DocumentIncarnation" not in keys
        ):
            return "aws-api"
    raise PayloadError(
        "cannot tell the source of this payload; pass --source (one of " + ", ".join(SOURCES) + ")", source=AUTO
    )


def normalize(source: str, payload: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """One decoded payload → its events (possibly none: a valid payload that is not ours)."""
    _check_source(source)
    if source == AUTO:
        source = detect_source(payload)
    if source == "gce-metadata":
        if not isinstance(payload, str):
            raise PayloadError("expected the plain-text metadata value", source=source)
        return gce.normalize_value(payload, ctx)
    try:
        return _JSON_NORMALIZERS[source](payload, ctx)
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError("payload nested too deeply", source=source) from None
    except ValueError as exc:  # pydantic's ValidationError is a ValueError: a field the model refused
        raise PayloadError(f"a value the event model refuses: {_first_line(exc)}", source=source) from None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " / ".join(lines[:3])


def normalize_bytes(source: str, raw: bytes, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """One payload as raw bytes (the HTTP body)."""
    _check_source(source)
    if source == "gce-metadata" or (source == AUTO and _looks_like_text_value(raw)):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("not UTF-8 text", source="gce-metadata") from None
        return normalize("gce-metadata", text, ctx)
    return normalize(source, decode_json(raw, source=source), ctx)


def _looks_like_text_value(raw: bytes) -> bool:
    stripped = raw.strip()
    return bool(stripped) and stripped[:1] not in (b"{", b"[", b'"') and b"\n" not in stripped


def normalize_stream(source: str, raw: bytes, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """Several documents in order (what `nodeheal normalize FILE` reads).

    Accepted layouts: one JSON payload; JSON lines (one payload per line); for `azure-imds` also a
    JSON array of documents; for `gce-metadata` one value per line. Azure documents and GCE values
    are diffed in order, so disappearances and returns to NONE become completion events.
    """
    _check_source(source)
    text_source = source
    if source == AUTO and _looks_like_text_lines(raw):
        text_source = "gce-metadata"
    if text_source == "gce-metadata":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise PayloadError("not UTF-8 text", source="gce-metadata") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise PayloadError("empty input", source="gce-metadata")
        tracker = GceMaintenanceTracker()
        return [e for n, line in enumerate(lines, 1) for e in tracker.feed(line, ctx, where=f"line {n}")]
    documents = _documents(raw, source=source)
    if source == AUTO:
        source = detect_source(documents[0])
        if source == "azure-imds" and len(documents) == 1 and isinstance(documents[0], list):
            documents = list(documents[0])
    elif source == "azure-imds" and len(documents) == 1 and isinstance(documents[0], list):
        documents = list(documents[0])
    if source == "azure-imds":
        azure_tracker = AzureDocumentTracker()
        out: list[CloudSystemEvent] = []
        for n, document in enumerate(documents, 1):
            try:
                out.extend(azure_tracker.feed(document, ctx))
            except PayloadError as exc:
                raise PayloadError(exc.detail, source=exc.source, where=f"document {n} {exc.where}") from None
        return out
    events: list[CloudSystemEvent] = []
    for n, document in enumerate(documents, 1):
        try:
            events.extend(normalize(source, document, ctx))
        except PayloadError as exc:
            where = exc.where if len(documents) == 1 else f"line {n} {exc.where}"
            raise PayloadError(exc.detail, source=exc.source, where=where) from None
    return events


def _looks_like_text_lines(raw: bytes) -> bool:
    stripped = raw.strip()
    return bool(stripped) and all(
        line.strip()[:1] not in (b"{", b"[", b'"') for line in stripped.splitlines() if line.strip()
    )


def _documents(raw: bytes, *, source: str) -> list[object]:
    try:
        return [decode_json(raw, source=source)]
    except PayloadError as whole:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise whole from None
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise
        docs: list[object] = []
        for n, line in enumerate(lines, 1):
            try:
                docs.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                raise PayloadError(
                    f"neither one JSON document ({whole.detail}) nor JSON lines (line {n} is not JSON)", source=source
                ) from None
        return docs
