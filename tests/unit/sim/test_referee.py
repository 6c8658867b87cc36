"""The demo's referee counts unsafe side effects from the emulators' logs and the AUDIT records alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nodeheal.schemas import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.sim.ecs_world import EventId, InstanceId, RecordedCall, SystemEvent, TaskId, WorldChange
from nodeheal.sim.faults import InjectedFault
from nodeheal.sim.referee import WorldLog, judge, lost_and_repeated

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NODE, IID = "n1", InstanceId("i-1")


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def rec(action: str, phase: str, s: float, action_id: str = "a1") -> RemediationRecord:
    return RemediationRecord(
        cluster="c", node=NODE, time=at(s), action_id=action_id, action=action, phase=phase, reason="r", actor="x"
    )  # type: ignore[arg-type]


def call(action: str, s: float, **params: str) -> RecordedCall:
    return RecordedCall(
        action=action,
        params={"InstanceId": IID, **params},
        at=at(s),
        http_status=200,
        error_code=None,
        request_id="r",
        access_key_id="ak",
    )


def change(kind: str, s: float, initiator: str = "api") -> WorldChange:
    return WorldChange(kind=kind, at=at(s), instance_id=IID, reason="reboot", initiator=initiator, task_id=TaskId("t"))  # type: ignore[arg-type]


def world(**over: Any) -> WorldLog:
    base: dict[str, Any] = {
        "ecs_calls": [],
        "ecs_changes": [],
        "ecs_events": [],
        "instance_node": {IID: NODE},
        "kube_effects": [],
        "node_commands": [],
        "boots": [],
        "dark": {},
    }
    return WorldLog(**(base | over))


FAULT = InjectedFault(fault_id="f1", fault_class="power_loss", node=NODE, injected_at=at(0).timestamp())
END = at(600).timestamp()


def _reboot_event() -> SystemEvent:
    """A SystemMaintenance.Reboot published at 1 s, due at 100 s, not executed."""
    return SystemEvent(
        event_id=EventId("e1"),
        instance_id=IID,
        event_type="SystemMaintenance.Reboot",
        status="Scheduled",
        publish_time=at(1),
        not_before=at(100),
    )


def test_a_clean_reboot_is_safe() -> None:
    audit = [rec("reboot", "intent", 10), rec("reboot", "started", 10.1), rec("reboot", "verified", 40)]
    log = world(
        ecs_calls=[call("RebootInstance", 10.2)],
        ecs_changes=[change("instance_down", 10.2), change("instance_up", 30.2)],
        boots=[(at(30.2).timestamp(), NODE)],
    )
    safety = judge(audit=audit, world=log, truth=[FAULT], run_end=END)
    assert safety["all_zero"], safety


def test_unsafe_side_effects_are_counted() -> None:
    pending = _reboot_event()
    audit = [rec("reboot", "started", 10.1), rec("reboot", "verified", 12), rec("uncordon", "intent", 13, "u1")]
    log = world(
        ecs_calls=[call("RebootInstance", 10.2), call("RedeployInstance", 50)],
        ecs_changes=[change("instance_down", 10.2), change("instance_down", 50)],
        ecs_events=[pending],
        kube_effects=[(at(14).timestamp(), NODE, "uncordon")],
        node_commands=[{"node": NODE, "action_id": "zz", "command": "clean_disk", "dry_run": False, "detail": "ok"}],
        dark={NODE: (at(45).timestamp(), at(90).timestamp())},
    )
    safety = judge(audit=audit, world=log, truth=[FAULT], run_end=END)
    assert safety["actions_without_intent"] == 3  # both cloud calls and the command; the uncordon had one
    assert safety["disrupted_twice_for_one_fault"] == 1
    assert safety["reboots_verified_without_new_boot"] == 1
    assert safety["uncordons_while_host_event_pending"] == 1
    assert safety["redeploys_for_reboot_events"] == 1
    assert safety["reboots_in_partition"] == 1
    assert not safety["all_zero"]


def row(
    fault: InjectedFault, *, detected: bool = True, cause: str | None = "node_crash", repaired: bool = True
) -> dict[str, Any]:
    return {**fault.as_json(), "detected": detected, "cause": cause if detected else None, "repaired": repaired}


def command(s: float, action_id: str, *, ran: bool = True, target: str = "kubelet") -> dict[str, Any]:
    return {
        "at": at(s).timestamp(),
        "node": NODE,
        "action_id": action_id,
        "command": "restart_service",
        "target": target,
        "dry_run": False,
        "ran": ran,
        "detail": "ok",
    }


def test_a_fault_seen_through_and_each_side_effect_once_is_neither_lost_nor_repeated() -> None:
    later = InjectedFault(fault_id="f2", fault_class="kubelet_crash", node=NODE, injected_at=at(300).timestamp())
    log = world(
        ecs_calls=[call("RebootInstance", 10)],
        kube_effects=[
            (at(5).timestamp(), NODE, "evict:default/app-1"),
            (at(305).timestamp(), NODE, "evict:default/app-1"),
        ],
        # the same command for the next fault is a new side effect; a replay the agent answered from memory is none
        node_commands=[command(20, "a1"), command(21, "a1", ran=False), command(310, "a2")],
    )
    judged = lost_and_repeated(fault_rows=[row(FAULT), row(later)], world=log, truth=[FAULT, later])
    assert (judged["lost_faults"], judged["repeated_side_effects"]) == (0, 0), judged
    assert judged["side_effects_by_kind"] == {"cloud_api": 1, "eviction": 2, "node_command": 2}


def test_lost_faults_and_repeated_side_effects_are_counted() -> None:
    undiagnosed = InjectedFault(fault_id="f2", fault_class="hang", node="n2", injected_at=at(5).timestamp())
    unresolved = InjectedFault(fault_id="f3", fault_class="hang", node="n3", injected_at=at(5).timestamp())
    unseen = InjectedFault(fault_id="f4", fault_class="hang", node="n4", injected_at=at(5).timestamp())
    log = world(
        # a restarted remediator rebooting the same instance again, and evicting the same pod again
        ecs_calls=[call("RebootInstance", 10), call("RebootInstance", 70)],
        kube_effects=[
            (at(8).timestamp(), NODE, "evict:default/app-1"),
            (at(60).timestamp(), NODE, "evict:default/app-1"),
        ],
        # the same restart done under two action ids, three times
        node_commands=[command(20, "a1"), command(40, "a2"), command(50, "a3")],
    )
    rows = [
        row(FAULT),
        row(undiagnosed, cause=None),
        row(unresolved, repaired=False),
        row(unseen, detected=False, repaired=False),
    ]
    judged = lost_and_repeated(fault_rows=rows, world=log, truth=[FAULT, undiagnosed, unresolved, unseen])
    assert judged["lost_faults"] == 3
    assert judged["lost_by_reason"] == {"not_diagnosed": 1, "no_remediation": 1, "not_detected": 1}
    assert {e["fault"]: e["missing"] for e in judged["lost_examples"]} == {
        "f2": ["diagnosed"],
        "f3": ["resolved"],
        "f4": ["detected", "diagnosed", "resolved"],
    }
    assert judged["repeated_side_effects"] == 1 + 1 + 2
    assert {(r["kind"], r["times"]) for r in judged["repeated_examples"]} == {
        ("cloud_api", 2),
        ("eviction", 2),
        ("node_command", 3),
    }


def test_a_replacement_needs_an_approved_intent_and_is_counted_as_rotation() -> None:
    from nodeheal.schemas.audit import PolicyCheck

    approved = RemediationRecord(
        cluster="c", node=NODE, time=at(10), action_id="act-r", action="replace", phase="intent", reason="r",
        actor="x", checks=(PolicyCheck(name="approval", passed=True, detail="approved by alice"),),
    )  # fmt: skip
    calls = [call("DeleteInstance", 11, Force="true"), call("RunInstances", 12, ClientToken="act-r")]
    ok = judge(audit=[approved, rec("replace", "succeeded", 13, "act-r")], world=world(ecs_calls=calls), truth=[],
               run_end=END)  # fmt: skip
    assert ok["all_zero"], ok
    assert ok["rotation"]["instances_released"] == 1 and ok["rotation"]["nodes_replaced_in_audit"] == 1
    # the same calls with an intent that carries no approval, and a RunInstances nobody intended
    unapproved = rec("replace", "intent", 10, "act-r")
    bad = judge(audit=[unapproved], world=world(ecs_calls=[*calls, call("RunInstances", 20, ClientToken="x")]),
                truth=[], run_end=END)  # fmt: skip
    assert bad["replacements_without_approval"] == 1
    assert bad["actions_without_intent"] == 1


def test_a_fault_held_at_an_approval_gate_is_handed_to_a_person_not_lost() -> None:
    mce = InjectedFault(fault_id="f5", fault_class="mce_fatal_panic", node="n5", injected_at=at(5).timestamp())
    waiting = rec("replace", "awaiting_approval", 60).model_copy(update={"node": "n5"})
    stopped = rec("reboot", "failed", 60).model_copy(update={"node": NODE})
    judged = lost_and_repeated(
        fault_rows=[row(FAULT, repaired=False), row(mce, repaired=False)],
        world=world(),
        truth=[FAULT, mce],
        audit=[waiting, stopped],
    )
    assert judged["lost_faults"] == 1  # the failed reboot's fault is still lost
    assert judged["lost_by_reason"] == {"unresolved": 1}
    assert judged["awaiting_approval"] == 1
    assert judged["awaiting_approval_examples"][0]["fault"] == "f5"


def _pool_of_two(disruptions: list[tuple[float, str, bool]]) -> WorldLog:
    """Three nodes of pool p1, whose budget is 2 nodes at once."""
    nodes = ("a", "b", "c")
    return world(
        disruptions=[(at(t).timestamp(), node, on) for t, node, on in disruptions],
        node_domains={n: ["cluster:all", "pool:p1"] for n in nodes},
        domain_limits={"cluster:all": 20, "pool:p1": 2},
    )


def node_rec(node: str, action: str, phase: str, s: float, target: str | None = None) -> RemediationRecord:
    return rec(action, phase, s, f"{node}-{action}").model_copy(update={"node": node, "target": target})


# a and b cordoned (the pool's two slots); a third node c is cordoned at 30 s while both still are
THREE_CORDONED = [(10, "a", True), (12, "b", True), (30, "c", True), (60, "a", False), (61, "b", False)]


def test_an_escalated_node_left_cordoned_is_not_a_budget_exceedance() -> None:
    # a was handed to a person at 20 s (its slot released), so c could take the slot: no exceedance;
    # a is reported as capacity lost to people's queues
    audit = [node_rec(n, "cordon", "intent", t) for n, t in (("a", 9), ("b", 11), ("c", 29))]
    audit.append(node_rec("a", "escalate", "succeeded", 20))
    safety = judge(audit=audit, world=_pool_of_two(THREE_CORDONED), truth=[], run_end=END)
    assert safety["budget_exceedances"] == 0, safety
    assert safety["handed_to_people"]["by_pool_max"] == {"p1": 1}


def test_a_third_node_over_the_budget_is_an_exceedance_unless_handed_over() -> None:
    audit = [node_rec(n, "cordon", "intent", t) for n, t in (("a", 9), ("b", 11), ("c", 29))]
    # no hand-over: three nodes nodeheal holds in a pool of budget 2
    safety = judge(audit=audit, world=_pool_of_two(THREE_CORDONED), truth=[], run_end=END)
    assert safety["budget_exceedances"] == 1 and safety["budget_exceedances_by_domain"] == {"pool": 1}
    assert safety["budget_exceedance_samples"][0]["held"] == ["a", "b", "c"]
    # a storm's escalation recorded on a's trail hands the domain to a person, not a's slot
    storm = node_rec("a", "escalate", "succeeded", 20, target="storm:node_pool:p1")
    assert (
        judge(audit=[*audit, storm], world=_pool_of_two(THREE_CORDONED), truth=[], run_end=END)["budget_exceedances"]
        == 1
    )
    # escalated at 20 s, but nodeheal acts on a again at 25 s (a new reboot): a counts again
    again = [node_rec("a", "escalate", "succeeded", 20), node_rec("a", "reboot", "intent", 25)]
    assert (
        judge(audit=[*audit, *again], world=_pool_of_two(THREE_CORDONED), truth=[], run_end=END)["budget_exceedances"]
        == 1
    )


def test_side_effects_after_the_window_are_not_judged() -> None:
    """AUDIT is read up to the run's end; a reboot the remediator does while the demo builds its report has
    its intent after the window too: not a side effect without intent."""
    log = world(ecs_calls=[call("RebootInstance", 604)], kube_effects=[(at(603).timestamp(), NODE, "cordon")])
    assert judge(audit=[], world=log, truth=[FAULT], run_end=END)["all_zero"]
    # inside the window, the same call without an intent is counted
    assert judge(audit=[], world=log, truth=[FAULT], run_end=at(700).timestamp())["actions_without_intent"] == 2


def _observed(s: float) -> CloudSystemEvent:
    return CloudSystemEvent(
        cloud="alibaba",
        channel="api_history",
        provider_event_id="e1",
        provider_event_type="SystemMaintenance.Reboot",
        action="reboot",
        cause="planned_maintenance",
        phase="scheduled",
        instance_id=IID,
        observed_at=at(s),
        cluster="c",
        node=NODE,
        time=at(s),
    )  # type: ignore[arg-type]


def test_an_uncordon_counts_against_a_host_event_from_when_nodeheal_could_know_of_it() -> None:
    """The cloud publishes a Reboot at 1 s; the ingest's poll brings it to CLOUD at 3 s. An uncordon at 2 s
    (a repair finished before anybody could know) undoes no plan; one at 4 s does; an event never seen on
    CLOUD counts from 30 s after it was published (nodeheal's miss, not an excuse)."""
    event = _reboot_event()

    def uncordons(s: float, cloud: list[CloudSystemEvent] | None) -> int:
        log = world(ecs_events=[event], kube_effects=[(at(s).timestamp(), NODE, "uncordon")])
        audit = [rec("uncordon", "intent", s - 0.1, "u1")]
        return int(
            judge(audit=audit, world=log, truth=[], run_end=END, cloud=cloud)["uncordons_while_host_event_pending"]
        )

    assert uncordons(2, [_observed(3)]) == 0
    assert uncordons(4, [_observed(3)]) == 1
    assert uncordons(2, None) == 1  # without the CLOUD records: from the publish time
    assert uncordons(20, []) == 0 and uncordons(40, []) == 1  # never observed: 30 s after publishing


def test_an_orderly_reboot_nodeheal_cordoned_or_rebooted_is_counted() -> None:
    """The node logged its shutdown and rebooted by itself: any cordon, eviction or API reboot of it meanwhile is
    counted (`orderly_reboots_disrupted`); an uncordon alone, or a later fault's actions, are not."""
    orderly = InjectedFault(
        fault_id="f2", fault_class="kernel_fault", kernel_class="planned_shutdown_reboot", node=NODE,
        injected_at=at(0).timestamp(),
    )  # fmt: skip
    later = InjectedFault(fault_id="f3", fault_class="power_loss", node=NODE, injected_at=at(300).timestamp())
    touched = world(
        kube_effects=[(at(20).timestamp(), NODE, "cordon"), (at(25).timestamp(), NODE, "evict:default/web")],
        ecs_calls=[call("RebootInstance", 30), call("RebootInstance", 310)],
    )
    audit = [rec("cordon", "intent", 19, "c1"), rec("drain", "intent", 24, "d1"), rec("reboot", "intent", 29, "r1")]
    report = judge(audit=audit, world=touched, truth=[orderly, later], run_end=END)
    assert report["orderly_reboots_disrupted"] == 1 and not report["all_zero"]
    assert report["examples"]["orderly_reboots_disrupted"][0]["effects"] == [
        "cordon",
        "evict:default/web",
        "RebootInstance",
    ]
    calm = world(kube_effects=[(at(20).timestamp(), NODE, "uncordon")], ecs_calls=[call("RebootInstance", 310)])
    assert (
        judge(audit=[rec("reboot", "intent", 309, "r2")], world=calm, truth=[orderly, later], run_end=END)[
            "orderly_reboots_disrupted"
        ]
        == 0
    )
