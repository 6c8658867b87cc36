"""JSON Schema export of every message model to `schemas/json/` (checked in, drift-tested in CI).

Run `python -m nodeheal.schemas.export [DIR]` after changing a model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.prober import ProberResults

EXPORTED: dict[str, type[BaseModel]] = {
    "node-probe": NodeProbe,
    "prober-results": ProberResults,
    "cloud-system-event": CloudSystemEvent,
    "anomaly": Anomaly,
    "diagnosis": Diagnosis,
    "remediation-record": RemediationRecord,
    "node-command": NodeCommand,
    "node-command-result": NodeCommandResult,
    "dead-letter": DeadLetter,
    "node-inventory": NodeInventory,
    "fleet-finding": FleetFinding,
    "crash-report": CrashReport,
}


def render() -> dict[str, str]:
    """File name → JSON text, exactly as it is written to disk."""
    out: dict[str, str] = {}
    for name, model in EXPORTED.items():
        schema = model.model_json_schema(by_alias=True)
        schema["$id"] = f"https://nodeheal.dev/schemas/{name}.schema.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def default_dir() -> Path:
    # schemas/src/nodeheal/schemas/export.py → schemas/json
    return Path(__file__).resolve().parents[3] / "json"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else default_dir()
    target.mkdir(parents=True, exist_ok=True)
    for file_name, text in render().items():
        (target / file_name).write_text(text)
    sys.stdout.write(f"wrote {len(EXPORTED)} schemas to {target}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
