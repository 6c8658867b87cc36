"""Container build files and NATS Helm values, checked without a Docker engine or a Helm binary
(neither exists here): every image installs one real distribution and runs an entry point that
exists; every manifest runs an image that has a build file and a module that image contains; the
NATS values carry the production properties the design relies on."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeheal.runtime.settings import NatsSettings
from tests.integration.deploy.natsauth_loader import load_natsauth
from tests.unit.deploy.test_kustomize import OVERLAYS, render

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ROOT / "deploy" / "images"


def distributions() -> dict[str, Path]:
    """Distribution name → its project directory, for every workspace member."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out: dict[str, Path] = {}
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        for member in ROOT.glob(pattern):
            pyproject = member / "pyproject.toml"
            if pyproject.exists():
                out[tomllib.loads(pyproject.read_text())["project"]["name"]] = member
    return out


def dockerfiles() -> dict[str, str]:
    return {p.name.removesuffix(".Dockerfile"): p.read_text() for p in sorted(IMAGES.glob("*.Dockerfile"))}


def module_of_dist(module: str, dist_dir: Path) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is not None and Path(spec.origin).is_relative_to(dist_dir.resolve())


def runnable(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    return not spec.submodule_search_locations or importlib.util.find_spec(f"{module}.__main__") is not None


def test_one_build_file_per_deployable_distribution() -> None:
    assert set(dockerfiles()) == {
        "nodeheal",
        "nodeheal-agent",
        "nodeheal-cloud-events",
        "nodeheal-detector",
        "nodeheal-diagnoser",
        "nodeheal-remediator",
    }


@pytest.mark.parametrize("image", sorted(dockerfiles()))
def test_each_image_installs_only_its_distribution_and_runs_as_non_root(image: str) -> None:
    text = dockerfiles()[image]
    dists = distributions()
    packages = re.findall(r"^\s+uv sync .*--package (\S+)$", text, flags=re.M)
    assert packages == [image], "one `uv sync --package <dist>` per image, for the image's own distribution"
    assert image in dists
    assert "--locked" in text and "--no-dev" in text and "--no-editable" in text
    assert re.search(r"^USER 65532:65532$", text, flags=re.M)
    cmd = re.search(r'^CMD \["python", "-m", "([\w.]+)"\]$', text, flags=re.M)
    if cmd:
        assert runnable(cmd.group(1)), cmd.group(1)
        assert module_of_dist(cmd.group(1), dists[image]), f"{cmd.group(1)} is not in {image}"
    else:
        entry = re.search(r'^ENTRYPOINT \["(\S+)"\]$', text, flags=re.M)
        assert entry, "an image needs a CMD python -m … or an ENTRYPOINT script"
        scripts = tomllib.loads((dists[image] / "pyproject.toml").read_text())["project"].get("scripts", {})
        assert entry.group(1) in scripts


def _containers(overlay: str) -> list[dict[str, Any]]:
    out = []
    for obj in render(overlay):
        template = obj.get("spec", {}).get("template", {})
        out.extend(template.get("spec", {}).get("containers", []))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_runs_a_built_image_and_a_module_it_contains(overlay: str) -> None:
    dists = distributions()
    images = dockerfiles()
    for container in _containers(overlay):
        match = re.fullmatch(r"ghcr\.io/nodeheal/([\w-]+):[\w.-]+", container["image"])
        assert match, container["image"]
        dist = match.group(1)
        assert dist in images, f"{container['name']} runs {dist}, which has no build file"
        command = [*container.get("command", []), *container.get("args", [])]
        if command[:2] == ["python", "-m"]:
            module = command[2]
            assert runnable(module) and module_of_dist(module, dists[dist]), (container["name"], module)
            if module == "nodeheal.cloud_events":
                from nodeheal.cloud_events.__main__ import PARTS

                part = command[3]
                assert part in PARTS
                assert importlib.util.find_spec(f"nodeheal.cloud_events.{part}.main") is not None, part
        else:
            scripts = tomllib.loads((dists[dist] / "pyproject.toml").read_text())["project"].get("scripts", {})
            assert command[0] in scripts, command


_SETTINGS = {
    "ingest": "nodeheal.cloud_events.ingest.settings:IngestSettings",
    "agent": "nodeheal.agent.settings:AgentSettings",
    "prober": "nodeheal.cloud_events.prober.settings:ProberSettings",
    "inventory": "nodeheal.cloud_events.inventory.settings:InventorySettings",
    "detector": "nodeheal.detector.settings:DetectorSettings",
    "diagnoser": "nodeheal.diagnoser.settings:DiagnoserSettings",
    "remediator": "nodeheal.remediator.settings:RemediatorSettings",
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_env_var_names_a_real_setting(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt NODEHEAL_* variable is silently ignored (extra="ignore"): check each one against the
    service's settings class, and that the literal values parse."""
    for obj in render(overlay):
        if obj["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        module_name, class_name = _SETTINGS[component].split(":")
        settings_cls = getattr(importlib.import_module(module_name), class_name)
        prefix = settings_cls.model_config["env_prefix"]
        env = obj["spec"]["template"]["spec"]["containers"][0]["env"]
        for entry in env:
            name = entry["name"]
            if not name.startswith("NODEHEAL_"):
                continue
            assert name.startswith(prefix), f"{component}: {name} does not start with {prefix}"
            path = name.removeprefix(prefix).lower().split("__")
            if path == ["nats", "inbox_prefix"] and "inbox_prefix" not in NatsSettings.model_fields:
                continue  # pending in the service kit (see test_services_under_auth); NATS permissions need it
            fields = settings_cls.model_fields
            model: Any = settings_cls
            for i, part in enumerate(path):
                assert part in fields, f"{component}: {name} names no setting ({part!r} not in {model.__name__})"
                annotation = fields[part].annotation
                if i < len(path) - 1:
                    model = next(
                        a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")
                    )
                    fields = model.model_fields
        for key in [k for k in os.environ if k.startswith(prefix)]:
            monkeypatch.delenv(key)
        for entry in env:
            if entry["name"].startswith(prefix) and "value" in entry and entry["value"] != "":
                monkeypatch.setenv(entry["name"], entry["value"])
        settings_cls()  # the literal values parse (valueFrom ones are filled by Kubernetes)


def _values(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "nats" / name).read_text())
    return data


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i(?:B)?)", quantity)
    assert match, quantity
    return float(match.group(1)) * units[match.group(2)]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_nats_production_values() -> None:
    values = _values("values.yaml")
    config = values["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["jetstream"]["memoryStore"]["enabled"] is False
    assert config["nats"]["tls"]["enabled"] is True and config["cluster"]["tls"]["enabled"] is True
    resources = values["container"]["merge"]["resources"]
    assert resources["requests"] == resources["limits"]
    limit = _bytes(resources["limits"]["memory"])
    assert 0.7 * limit <= _bytes(values["container"]["env"]["GOMEMLIMIT"]) <= 0.85 * limit
    merge = config["merge"]
    lame_duck = _seconds(merge["lame_duck_grace_period"]) + _seconds(merge["lame_duck_duration"])
    assert values["podTemplate"]["merge"]["spec"]["terminationGracePeriodSeconds"] > lame_duck
    spread = values["podTemplate"]["topologySpreadConstraints"]
    assert {k: v["whenUnsatisfiable"] for k, v in spread.items()} == {
        "kubernetes.io/hostname": "DoNotSchedule",
        "topology.kubernetes.io/zone": "DoNotSchedule",
    }
    assert values["podDisruptionBudget"]["enabled"] is True
    assert values["promExporter"]["enabled"] is True
    assert re.fullmatch(r"\d+\.\d+\.\d+(-alpine)?", values["container"]["image"]["tag"])


@pytest.mark.parametrize("name", ["values.yaml", "values-dev.yaml"])
def test_nats_values_mount_the_generated_authorization(name: str) -> None:
    values = _values(name)
    assert values["config"]["merge"]["$include"] == "../nats-auth/auth.conf"
    mounts = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    volumes = [p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    assert {"name": "nats-auth", "mountPath": "/etc/nats-auth", "readOnly": True} in mounts
    assert volumes == [{"name": "nats-auth", "secret": {"secretName": "nats-auth"}}]


def test_natsauth_show_lists_every_role() -> None:
    from tests.integration.deploy.natsauth_loader import load_natsauth

    natsauth = load_natsauth()
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert natsauth.main(["show", "--prefix", "fleet1"]) == 0
    matrix = json.loads(out.getvalue())
    assert set(matrix) == set(natsauth.ROLES)
    assert matrix["remediator"]["pub"]["allow"][0] == "fleet1.audit.*.*"
    assert not any("audit" in s for role in matrix if role != "remediator" for s in matrix[role]["pub"]["allow"])
    assert sys.version_info >= (3, 11)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_uses_the_inbox_its_nats_user_may_read(overlay: str) -> None:
    natsauth = load_natsauth()
    for obj in render(overlay):
        if obj["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        env = {e["name"]: e.get("value") for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env[f"NODEHEAL_{component.upper()}_NATS__INBOX_PREFIX"] == natsauth.inbox_prefix(component)
