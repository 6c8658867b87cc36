"""The permission matrix of deploy/nats/natsauth.py stays true to the code: every durable a service
creates by default is registered to its role (so no other role may touch it), every role's DLQ token
is the one its code writes, and docs/security.md carries the current generated table. What the
server does with the matrix is tested in tests/integration/deploy/test_nats_permissions.py."""

from __future__ import annotations

from pathlib import Path

from nodeheal.agent.settings import AgentSettings
from nodeheal.cloud_events.ingest.settings import IngestSettings
from nodeheal.detector.settings import SERVICE as DETECTOR
from nodeheal.detector.settings import DetectorSettings
from nodeheal.diagnoser.settings import SERVICE as DIAGNOSER
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.remediator.handlers import SERVICE as REMEDIATOR
from nodeheal.remediator.settings import RemediatorSettings
from tests.integration.deploy.natsauth_loader import load_natsauth

ROOT = Path(__file__).resolve().parents[3]


def test_the_services_default_durables_are_owned_by_their_roles() -> None:
    natsauth = load_natsauth()
    owned = {(stream, name): role for role, stream, name in natsauth.durables()}
    detector = DetectorSettings()
    for stream in ("PROBES", "CLOUD", "AUDIT"):
        assert owned[(stream, detector.probe_durable)] == "detector"
    diagnoser = DiagnoserSettings()
    for stream in ("ANOMALIES", "CLOUD", "AUDIT"):
        assert owned[(stream, diagnoser.durable)] == "diagnoser"
    assert owned[("DIAGNOSES", RemediatorSettings().durable)] == "remediator"
    # partitioned detector replicas own their names too, when the layout says how many there are
    layout = natsauth.Layout(detector_replicas=(3,))
    partitioned = {(s, n) for r, s, n in natsauth.durables(layout) if r == "detector"}
    assert ("PROBES", "detector-2-of-3") in partitioned


def test_each_role_may_write_the_dlq_under_the_name_its_code_uses() -> None:
    natsauth = load_natsauth()
    expected = {
        "ingest": IngestSettings(allow_unauthenticated=True).service_name,
        "agent": AgentSettings().dlq_service,
        "detector": DETECTOR,
        "diagnoser": DIAGNOSER,
        "remediator": REMEDIATOR,
    }
    for role, token in expected.items():
        perms = natsauth.role_permissions(role)
        dlq = [s for s in perms.pub_allow if ".dlq." in s]
        assert dlq == [f"nodeheal.dlq.{token}"], role


def test_no_role_but_admin_may_use_the_legacy_server_named_consumer_create_on_a_stream() -> None:
    """`$JS.API.CONSUMER.CREATE.<stream>` takes the consumer name from the request body: whoever may
    publish it on a stream can rewrite every durable there. No role has it on a stream with durables."""
    natsauth = load_natsauth()
    found = set()
    for role in natsauth.ROLES:
        if role == "admin":
            continue
        for subject in natsauth.role_permissions(role).pub_allow:
            head = "$JS.API.CONSUMER.CREATE."
            if subject.startswith(head) and "." not in subject[len(head) :]:
                stream = subject[len(head) :]
                if not stream.startswith("KV_"):
                    found.add((role, stream))
    assert found == set()


def test_security_md_shows_the_current_generated_matrix() -> None:
    table = load_natsauth().matrix_markdown()
    assert table in (ROOT / "docs" / "security.md").read_text(), (
        "docs/security.md is stale: paste `uv run python deploy/nats/natsauth.py table`"
    )


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def test_only_the_prober_may_publish_prober_batches() -> None:
    """A `ProberResults` batch speaks for many nodes: of the services only the prober (and the admin) may publish
    one. An agent may publish only on its own node's subjects, whose node token is the escaped node name, and no
    escaped name is a batch's routing token (`_r<k>`): even an agent of a node named `_r0` cannot."""
    from nodeheal.schemas.subjects import escape_token, prober_results_subject

    natsauth = load_natsauth()
    batch_subjects = [prober_results_subject("prod-1", p, 8) for p in range(8)] + [
        prober_results_subject("prod-1", 0, 0)
    ]
    for role in natsauth.ROLES:
        allowed = natsauth.role_permissions(role).pub_allow
        may = {s for s in batch_subjects if any(_matches(a, s) for a in allowed)}
        if role in ("prober", "admin"):
            assert may == set(batch_subjects), role
        elif role == "agent":
            for node in ("_r0", "n1"):
                own = [
                    a.replace("{{tag(cluster)}}", "prod-1").replace("{{tag(node)}}", escape_token(node))
                    for a in allowed
                ]
                assert not any(_matches(a, s) for a in own for s in batch_subjects), node
        else:
            assert may == set(), role


def test_init_without_detector_replicas_protects_the_production_overlays_three_detectors(tmp_path: Path) -> None:
    """`natsauth.py init` run without `--detector-replicas` (the flag is easy to forget) still denies every
    other role the durables of the production overlay's three partitioned detectors; a given count replaces
    the default."""
    import base64
    import json

    natsauth = load_natsauth()

    def remediator_denies(*flags: str) -> list[str]:
        out = tmp_path / "-".join(flags or ("default",))
        assert natsauth.main(["init", "--out", str(out), *flags]) == 0
        account = (out / "keys" / "account.pub").read_text().strip()
        conf = (out / "auth.conf").read_text()
        account_jwt = conf.split(f"{account}: ", 1)[1].split()[0]  # its line of resolver_preload
        claims = json.loads(base64.urlsafe_b64decode(account_jwt.split(".")[1] + "=="))
        key = next(k for k in claims["nats"]["signing_keys"] if k["role"] == "remediator")
        return list(key["template"]["pub"]["deny"])

    default = remediator_denies()
    assert "$JS.API.CONSUMER.DELETE.PROBES.detector-2-of-3" in default
    assert "$JS.API.CONSUMER.MSG.NEXT.PROBES.detector-0-of-3" in default
    five = remediator_denies("--detector-replicas", "5")
    assert "$JS.API.CONSUMER.DELETE.PROBES.detector-4-of-5" in five
    assert "$JS.API.CONSUMER.DELETE.PROBES.detector-2-of-3" not in five
