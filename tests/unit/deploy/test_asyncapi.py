"""The committed AsyncAPI documents (docs/asyncapi/) are what deploy/tools/asyncapi.py generates
from the schemas now, and each describes the channels its service really uses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def generator() -> ModuleType:
    name = "nodeheal_deploy_asyncapi"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "tools" / "asyncapi.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


SERVICES = ["ingest", "agent", "prober", "detector", "diagnoser", "remediator"]


@pytest.mark.parametrize("service", SERVICES)
def test_committed_document_is_current(service: str) -> None:
    path = ROOT / "docs" / "asyncapi" / f"{service}.json"
    assert path.read_text() == generator().render(service), "stale: run `uv run python deploy/tools/asyncapi.py`"


def test_there_is_one_committed_document_per_generated_service_and_no_other() -> None:
    """A service the generator gained (not yet written) or a document left behind for one it lost."""
    module = generator()
    generated = {*module.CONTRACTS, *module.DESCRIPTIONS}
    committed = {p.stem for p in (ROOT / "docs" / "asyncapi").glob("*.json")}
    assert committed == generated, "documents added or removed: run `uv run python deploy/tools/asyncapi.py`"
    assert generated == set(SERVICES), "a service to add to SERVICES (so its document is compared)"


def test_documents_describe_the_pipeline() -> None:
    docs = {s: json.loads((ROOT / "docs" / "asyncapi" / f"{s}.json").read_text()) for s in ("detector", "remediator")}
    detector = docs["detector"]
    assert detector["asyncapi"] == "3.0.0"
    actions = {op["channel"]["$ref"].split("/")[-1]: op["action"] for op in detector["operations"].values()}
    assert actions["probes"] == "receive" and actions["anomalies"] == "send"
    assert detector["channels"]["anomalies"]["address"] == "nodeheal.anomaly.{cluster}.{node}"
    assert "Anomaly" in detector["components"]["schemas"] and "NodeProbe" in detector["components"]["schemas"]
    remediator = docs["remediator"]
    assert remediator["channels"]["audit"]["address"] == "nodeheal.audit.{cluster}.{node}"
    assert "trace_id" in remediator["components"]["schemas"]["RemediationRecord"]["properties"]
