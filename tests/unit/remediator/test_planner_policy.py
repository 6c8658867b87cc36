"""The remediator's pure decisions: planning with cloud events, budgets, storms, flap quarantine."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from nodeheal.cloud_events.inventory.mapping import LabelConfig, node_to_inventory
from nodeheal.cloud_events.normalize import AzureDocumentTracker, GceMaintenanceTracker, NormalizeContext
from nodeheal.remediator import planner, policy
from nodeheal.remediator.settings import Budget, PolicySettings
from nodeheal.remediator.views import FleetView
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import AckOption, CloudAction, CloudPhase, CloudSystemEvent
from nodeheal.schemas.diagnosis import Diagnosis, RecommendedAction
from nodeheal.schemas.inventory import NodeInventory

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _diag(*actions: str, diag_id: str = "d1", episode: str = "a") -> Diagnosis:
    return Diagnosis(
        id=diag_id,
        cluster="c",
        node="n1",
        anomaly_ids=(episode,),
        category="hardware",
        cause="mce",
        confidence=0.9,
        recommended=tuple(RecommendedAction(action=a, reason="kb") for a in actions),  # type: ignore[arg-type]
        identified_at=NOW,
    )


def _cloud(
    action: CloudAction, *, starts_in_s: float, ack: bool = True, phase: CloudPhase = "scheduled"
) -> CloudSystemEvent:
    return CloudSystemEvent(
        cluster="c",
        node="n1",
        cloud="alibaba",
        channel="api_history",
        provider_event_id="e-1",
        provider_event_type=f"SystemMaintenance.{action.title()}",
        action=action,
        cause="planned_maintenance",
        phase=phase,
        is_terminal=phase in ("completed", "avoided", "canceled", "failed"),
        instance_id="i-1",
        not_before=NOW + timedelta(seconds=starts_in_s),
        ack=(AckOption(method="alibaba.AcceptInquiredSystemEvent"),) if ack else (),
        observed_at=NOW,
    )


def test_action_ids_are_per_episode_and_the_ladder_ends_in_escalation() -> None:
    a = planner.plan(diagnosis=_diag("restart_service", "reboot"), cloud_events=[], policy=PolicySettings(), now=NOW)
    assert [s.action for s in a.steps] == ["restart_service", "reboot", "escalate"]
    # an updated diagnosis of the same episode (new id, amended ladder) continues the same steps
    update = planner.plan(
        diagnosis=_diag("cordon", "reboot", diag_id="d2"), cloud_events=[], policy=PolicySettings(), now=NOW
    )
    assert update.steps[1].action_id == a.steps[1].action_id
    other = planner.plan(
        diagnosis=_diag("restart_service", diag_id="d3", episode="b"), cloud_events=[], policy=PolicySettings(), now=NOW
    )
    assert other.steps[0].action_id != a.steps[0].action_id


def test_no_reboot_of_our_own_when_the_host_reboot_is_near_the_node_is_handed_over() -> None:
    p = planner.plan(
        diagnosis=_diag("cordon", "reboot"),
        cloud_events=[_cloud("reboot", starts_in_s=300)],
        policy=PolicySettings(),
        now=NOW,
    )
    assert [s.action for s in p.steps] == ["cordon", "wait_for_cloud_event"]
    assert p.steps[-1].cloud_event is not None and p.steps[-1].target == "e-1"
    far = planner.plan(
        diagnosis=_diag("reboot"), cloud_events=[_cloud("reboot", starts_in_s=86_400)], policy=PolicySettings(), now=NOW
    )
    assert [s.action for s in far.steps] == ["reboot", "escalate"]


def test_maintenance_accepts_a_reboot_event_with_reboot_api_and_a_redeploy_only_with_approval() -> None:
    reboot = _cloud("reboot", starts_in_s=3600).model_copy(
        update={"ack": (AckOption(method="alibaba.RebootInstance"), AckOption(method="alibaba.RedeployInstance"))}
    )
    steps = planner.maintenance_steps(reboot, policy=PolicySettings())
    assert [s.action for s in steps] == ["cordon", "drain", "accept_cloud_event"]
    assert not steps[-1].needs_approval
    redeploy = _cloud("redeploy", starts_in_s=3600).model_copy(
        update={"ack": (AckOption(method="alibaba.RedeployInstance"),)}
    )
    assert planner.maintenance_steps(redeploy, policy=PolicySettings())[-1].needs_approval
    # a reboot event that only offers RedeployInstance is never accepted early
    only_redeploy = reboot.model_copy(update={"ack": (AckOption(method="alibaba.RedeployInstance"),)})
    assert [s.action for s in planner.maintenance_steps(only_redeploy, policy=PolicySettings())] == ["cordon", "drain"]


def test_an_early_accept_of_a_reboot_that_loses_local_data_needs_approval_as_a_redeploy_does() -> None:
    """Alibaba `RebootAndReInitErrorDisk` is a `reboot` that re-initializes a local disk: accepting it early
    (AcceptInquiredSystemEvent) wipes that disk's data now, so a person approves it; the isolate variant
    loses nothing and is accepted as any reboot."""
    reinit = _cloud("reboot", starts_in_s=3600, phase="pending_approval").model_copy(
        update={"provider_event_type": "SystemMaintenance.RebootAndReInitErrorDisk", "local_data_loss": True}
    )
    steps = planner.maintenance_steps(reinit, policy=PolicySettings())
    assert [s.action for s in steps] == ["cordon", "drain", "accept_cloud_event"]
    assert [s.needs_approval for s in steps] == [False, False, True]
    isolate = reinit.model_copy(
        update={"provider_event_type": "SystemMaintenance.RebootAndIsolateErrorDisk", "local_data_loss": False}
    )
    assert not planner.maintenance_steps(isolate, policy=PolicySettings())[-1].needs_approval


def test_a_postponed_host_event_is_prepared_for_again_under_new_action_ids() -> None:
    """Each postponement (the cloud moved the event beyond the lead after its drain) starts a round of the
    episode whose steps have ids of their own, so they run again; round 0 keeps the ids of before (records
    already in AUDIT are continued, not repeated)."""
    event = _cloud("reboot", starts_in_s=600).model_copy(update={"ack": (AckOption(method="alibaba.RebootInstance"),)})
    episode = planner.cloud_episode(event)
    first = planner.maintenance_steps(event, policy=PolicySettings())
    assert [s.action_id for s in first] == [
        planner.action_id(diagnosis_id=episode, action=a, target="e-1")
        for a in ("cordon", "drain", "accept_cloud_event")
    ]
    assert planner.maintenance_steps(event, policy=PolicySettings(), postponed=0) == first
    second = planner.maintenance_steps(event, policy=PolicySettings(), postponed=1)
    third = planner.maintenance_steps(event, policy=PolicySettings(), postponed=2)
    assert [s.action for s in second] == [s.action for s in first]
    assert [s.target for s in second] == ["e-1"] * 3  # still the event's id on the record
    ids = [s.action_id for steps in (first, second, third) for s in steps]
    assert len(set(ids)) == 9


def test_aws_and_gce_host_events_are_waited_for_whatever_their_notice_offers() -> None:
    # no SDK in the lock file runs them early with their own API: drained, never accepted with another call
    for cloud, action, methods in (
        ("aws", "reboot", ("aws.RebootInstances", "aws.ModifyInstanceEventStartTime")),
        ("aws", "stop", ("aws.StopStartInstances",)),
        ("gcp", "terminate", ()),
        ("gcp", "reboot", ("alibaba.RebootInstance",)),  # even a method of another cloud's vocabulary
    ):
        event = _cloud(action, starts_in_s=3600).model_copy(
            update={"cloud": cloud, "ack": tuple(AckOption(method=m) for m in methods)}
        )
        steps = planner.maintenance_steps(event, policy=PolicySettings())
        assert [s.action for s in steps] == ["cordon", "drain"], (cloud, action)


def test_a_terminal_cloud_event_is_not_overwritten_by_a_late_one() -> None:
    done = _cloud("reboot", starts_in_s=60, phase="completed")
    late = _cloud("reboot", starts_in_s=60).model_copy(update={"observed_at": NOW + timedelta(seconds=5)})
    assert planner.pending_cloud_events([done, late]) == []


def _aws(channel: str, event_id: str, **update: object) -> CloudSystemEvent:
    base = _cloud("reboot", starts_in_s=3600).model_copy(
        update={"cloud": "aws", "channel": channel, "provider_event_id": event_id, "ack": ()}
    )
    return base.model_copy(update=update)


def _done(ev: CloudSystemEvent, phase: CloudPhase, later_s: float) -> CloudSystemEvent:
    return ev.model_copy(update={"phase": phase, "is_terminal": True, "observed_at": NOW + timedelta(seconds=later_s)})


def test_one_host_event_from_two_channels_is_one_event_until_either_says_it_ran() -> None:
    view = FleetView()
    health = _aws("health_api", "arn:e1#i-1")
    imds = _aws("imds", "instance-event-1", observed_at=NOW + timedelta(seconds=1))
    view.on_cloud(health)
    view.on_cloud(imds)
    assert [(e.provider_event_id, e.extended.get("reported_as")) for e in view.cloud_events("n1")] == [
        ("arn:e1#i-1", "instance-event-1")  # under the id first seen, the latest word
    ]
    view.on_cloud(_done(imds, "completed", 5))  # either channel's "it ran" is the event's
    assert [(e.provider_event_id, e.phase) for e in view.cloud_events("n1")] == [("arn:e1#i-1", "completed")]
    assert planner.host_events(view.cloud_events("n1")) == []
    view.on_cloud(_done(health, "completed", 60))  # the other channel's late word changes nothing
    assert [(e.provider_event_id, e.phase) for e in view.cloud_events("n1")] == [("arn:e1#i-1", "completed")]


def test_a_ladder_aimed_at_the_twin_report_is_handed_to_the_one_event() -> None:
    view = FleetView()
    view.on_cloud(_aws("health_api", "arn:e1#i-1", not_before=NOW + timedelta(seconds=300)))
    view.on_cloud(_aws("imds", "instance-event-1", not_before=NOW + timedelta(seconds=300)))
    d = _diag("cordon", "drain", "wait_for_cloud_event", "escalate").model_copy(
        update={
            "recommended": tuple(
                RecommendedAction(action=a, reason="diagnoser", target="instance-event-1")  # type: ignore[arg-type]
                for a in ("cordon", "drain", "wait_for_cloud_event", "escalate")
            )
        }
    )
    the_plan = planner.plan(
        diagnosis=d,
        cloud_events=view.cloud_events("n1"),
        policy=PolicySettings(),
        now=NOW,
        aliases=view.event_aliases("n1"),
    )
    assert [(s.action, s.target) for s in the_plan.steps] == [("wait_for_cloud_event", "arn:e1#i-1")]


def test_distinct_host_events_are_not_merged() -> None:
    view = FleetView()
    view.on_cloud(_aws("health_api", "arn:e1#i-1", provider_event_type="AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED"))
    for other in (
        _aws("imds", "instance-event-2", not_before=NOW + timedelta(hours=3)),  # another start
        _aws("imds", "instance-event-3", action="stop"),  # another action
        _aws("health_api", "arn:e4#i-1"),  # the same channel: its ids are the cloud's own
        _aws("imds", "instance-event-5", provider_event_type="instance-reboot"),  # another kind, same minute
    ):
        view.on_cloud(other)
    assert sorted(e.provider_event_id for e in view.cloud_events("n1")) == [
        "arn:e1#i-1",
        "arn:e4#i-1",
        "instance-event-2",
        "instance-event-3",
        "instance-event-5",
    ]
    view.on_cloud(_aws("imds", "instance-event-6", provider_event_type="system-reboot"))  # its own kind: a twin
    assert view.event_aliases("n1") == {"instance-event-6": "arn:e1#i-1"}
    view.on_cloud(_cloud("reboot", starts_in_s=0).model_copy(update={"action": "state_change", "node": "n2"}))
    assert view.cloud_events("n2") == []  # not a host event: not kept


def test_the_first_channel_to_say_the_event_ended_decides_and_a_finished_event_takes_no_twin() -> None:
    view = FleetView()
    health = _aws("health_api", "arn:e1#i-1")
    imds = _aws("imds", "instance-event-1")
    view.on_cloud(health)
    view.on_cloud(imds)
    view.on_cloud(_done(imds, "canceled", 5))  # only IMDS can say canceled on AWS ...
    assert [e.phase for e in view.cloud_events("n1")] == ["canceled"]
    view.on_cloud(_done(health, "completed", 60))  # ... and Health's later "closed" does not undo it
    assert [e.phase for e in view.cloud_events("n1")] == ["canceled"]
    view.on_cloud(_aws("imds", "instance-event-9", observed_at=NOW + timedelta(seconds=70)))
    assert sorted(e.provider_event_id for e in planner.host_events(view.cloud_events("n1"))) == [
        "instance-event-9"  # a new event at the same time is its own
    ]


def test_a_reschedule_one_channel_alone_reports_splits_the_pair() -> None:
    view = FleetView()
    view.on_cloud(_aws("health_api", "arn:e1#i-1"))
    imds = _aws("imds", "instance-event-1")
    view.on_cloud(imds)
    assert len(view.cloud_events("n1")) == 1
    later = imds.not_before + timedelta(days=3)  # type: ignore[operator]
    view.on_cloud(imds.model_copy(update={"not_before": later, "observed_at": NOW + timedelta(seconds=5)}))
    # the channels disagree: each report is its own event again, drained for on its own
    assert sorted((e.provider_event_id, e.not_before) for e in planner.host_events(view.cloud_events("n1"))) == [
        ("arn:e1#i-1", imds.not_before),
        ("instance-event-1", later),
    ]
    assert view.event_aliases("n1") == {}


def test_events_of_another_machine_under_the_node_name_are_not_the_nodes() -> None:
    view = FleetView()
    old = _aws("eventbridge", "spot-1", action="terminate", instance_id="i-old")  # never got a terminal phase
    view.on_cloud(old)
    assert [e.provider_event_id for e in view.cloud_events("n1")] == ["spot-1"]  # no inventory yet: kept
    view.on_inventory(NodeInventory(cluster="c", node="n1", cloud="aws", instance_id="i-new"))
    assert view.cloud_events("n1") == []  # the name now belongs to another machine
    view.on_cloud(_aws("imds", "instance-event-7", instance_id="i-new"))
    assert [e.provider_event_id for e in view.cloud_events("n1")] == ["instance-event-7"]


def _node_from_provider_id(node: str, provider_id: str) -> NodeInventory:
    """The node's inventory record as the inventory watcher writes it (its own mapping of `spec.providerID`)."""
    return node_to_inventory(
        {"metadata": {"name": node}, "spec": {"providerID": provider_id}},
        cluster="c",
        labels_config=LabelConfig(),
        now=NOW,
    )


def test_azure_and_gce_host_events_are_matched_to_the_node_by_instance() -> None:
    """The inventory calls Google's cloud `gce`, the events `gcp`: compared by one canonical name, an Azure or
    GCE host event of the node's instance is the node's, one of another machine under its name is not. Before,
    Azure and GCE events were never compared (a new machine under a reused name was drained for the old one's
    event that never ended)."""
    view = FleetView()
    gce_node = _node_from_provider_id("g1", "gce://proj/us-central1-a/gke-pool-1-abcd")
    assert gce_node.cloud == "gce"  # the inventory's spelling, as stored in the bucket (unchanged)
    view.on_inventory(gce_node)
    ctx = NormalizeContext(observed_at=NOW, cluster="c", node="g1", instance_id="gke-pool-1-abcd")
    (mine,) = GceMaintenanceTracker().feed("TERMINATE_ON_HOST_MAINTENANCE", ctx)
    assert mine.cloud == "gcp"
    old = GceMaintenanceTracker().feed(
        "TERMINATE_ON_HOST_MAINTENANCE",
        replace(ctx, instance_id="gke-pool-1-gone", observed_at=NOW - timedelta(days=2)),
    )[0]
    numeric = GceMaintenanceTracker().feed(  # the metadata's numeric `instance/id`: not the inventory's spelling
        "TERMINATE_ON_HOST_MAINTENANCE", replace(ctx, instance_id="4520934521", observed_at=NOW - timedelta(days=1))
    )[0]
    for ev in (mine, old, numeric):
        view.on_cloud(ev)
    assert sorted(e.provider_event_id for e in view.cloud_events("g1")) == sorted(
        [mine.provider_event_id, numeric.provider_event_id]
    )

    az_node = _node_from_provider_id(
        "aks-pool-12345-vmss000003",
        "azure:///subscriptions/s/resourceGroups/G/providers/Microsoft.Compute/virtualMachineScaleSets/"
        "aks-pool-12345-vmss/virtualMachines/3",
    )
    view.on_inventory(az_node)
    az_ctx = NormalizeContext(observed_at=NOW, cluster="c", node=az_node.node)

    def azure_event(event_id: str, vm: str) -> CloudSystemEvent:
        doc = {
            "DocumentIncarnation": 1,
            "Events": [
                {
                    "EventId": event_id,
                    "EventType": "Reboot",
                    "ResourceType": "VirtualMachine",
                    "Resources": [vm],
                    "EventStatus": "Scheduled",
                    "NotBefore": "Thu, 01 Jan 2026 13:00:00 GMT",
                    "EventSource": "Platform",
                }
            ],
        }
        (ev,) = AzureDocumentTracker().feed(doc, az_ctx)
        return ev

    az_mine = azure_event("A-1", "AKS-POOL-12345-VMSS_3")  # Azure names are case-insensitive
    az_old = azure_event("A-2", "aks-pool-12345-vmss_7")
    view.on_cloud(az_mine)
    view.on_cloud(az_old)
    assert [e.provider_event_id for e in view.cloud_events(az_node.node)] == [az_mine.provider_event_id]


def test_budget_percent_never_rounds_to_zero_and_the_smaller_limit_wins() -> None:
    assert policy.budget_limit(Budget(max_pct=10), 5) == 1
    assert policy.budget_limit(Budget(max_count=3, max_pct=50), 100) == 3
    assert policy.budget_limit(Budget(), 100) is None


def test_layered_budgets_count_live_slots_only() -> None:
    pol = PolicySettings(rack_budget=Budget(max_count=1))
    sizes = policy.DomainSizes.of([policy.Placement(node=f"n{i}", zone="z", rack="r1") for i in range(10)])
    busy = policy.Slot(
        node="n9", zone="z", rack="r1", node_pool=None, action_id="x", holder="h", until=NOW + timedelta(minutes=5)
    )
    expired = policy.Slot(
        node="n8", zone="z", rack="r1", node_pool=None, action_id="y", holder="h", until=NOW - timedelta(minutes=1)
    )
    me = policy.Placement(node="n1", zone="z", rack="r1")
    checks = {c.name: c for c in policy.check_budgets(placement=me, slots=[busy], sizes=sizes, policy=pol, now=NOW)}
    assert not checks["budget.rack"].passed
    checks = {c.name: c for c in policy.check_budgets(placement=me, slots=[expired], sizes=sizes, policy=pol, now=NOW)}
    assert checks["budget.rack"].passed


def test_storm_starts_above_threshold_and_ends_below_resume_share() -> None:
    pol = PolicySettings(storm_threshold_pct=30, storm_min_unhealthy=3, storm_resume_pct=10)
    placements = [policy.Placement(node=f"n{i}", zone="z1") for i in range(10)]
    sizes = policy.DomainSizes.of(placements)
    sick = {p.node: p for p in placements[:4]}
    verdicts = policy.evaluate_storms(unhealthy=sick, sizes=sizes, previously=frozenset(), policy=pol)
    assert verdicts[("zone", "z1")].in_storm
    assert not policy.check_storm(placement=placements[0], verdicts=verdicts).passed
    still = policy.evaluate_storms(
        unhealthy=dict(list(sick.items())[:2]), sizes=sizes, previously=frozenset({("zone", "z1")}), policy=pol
    )
    assert still[("zone", "z1")].in_storm  # 20 % is above the resume share: hysteresis
    over = policy.evaluate_storms(unhealthy={}, sizes=sizes, previously=frozenset({("zone", "z1")}), policy=pol)
    assert not over[("zone", "z1")].in_storm


def test_three_reboots_in_a_day_quarantine_the_node() -> None:
    history = [
        RemediationRecord(
            cluster="c",
            node="n1",
            action_id=f"a{i}",
            action="reboot",
            phase="started",
            reason="r",
            actor="x",
            time=NOW - timedelta(hours=i + 1),
        )
        for i in range(3)
    ]
    checks = policy.check_node_history(action="reboot", history=history, policy=PolicySettings(), now=NOW)
    assert not next(c for c in checks if c.name == "flap_quarantine").passed
    checks = policy.check_node_history(action="reboot", history=history[:2], policy=PolicySettings(), now=NOW)
    assert all(c.passed for c in checks)


def test_stale_or_recovered_diagnoses_fail_freshness() -> None:
    d = _diag("reboot")
    ok = policy.check_fresh(diagnosis=d, policy=PolicySettings(), now=NOW + timedelta(seconds=10), recovered_at=None)
    assert all(c.passed for c in ok)
    stale = policy.check_fresh(diagnosis=d, policy=PolicySettings(), now=NOW + timedelta(hours=1), recovered_at=None)
    assert policy.failed(stale)[0].name == "stale_diagnosis"
    recovered = policy.check_fresh(
        diagnosis=d, policy=PolicySettings(), now=NOW, recovered_at=NOW + timedelta(seconds=1)
    )
    assert policy.failed(recovered)[0].name == "node_recovered"


def test_rotation_ladders_end_with_the_machine_and_replace_always_needs_approval() -> None:
    no_approvals = PolicySettings(approval_required=())
    rotation = planner.plan(
        diagnosis=_diag("cordon", "drain", "retire", "replace"), cloud_events=[], policy=no_approvals, now=NOW
    )
    assert [s.action for s in rotation.steps] == ["cordon", "drain", "retire", "replace"]  # no "exhausted" page
    assert [s.needs_approval for s in rotation.steps] == [False, False, False, True]
    assert {s.action for s in rotation.steps if s.disruptive} == {"drain", "retire", "replace"}
    # the rotation of a spent repair budget continues the episode's own steps (same ids), never repeats them
    rotate = planner.rotation_steps(_diag("reboot"), policy=no_approvals, why="budget spent", rung=1)
    assert [s.action_id for s in rotate] == [s.action_id for s in rotation.steps]


def test_an_operator_request_is_not_paged_when_it_succeeds() -> None:
    request = _diag("cordon").model_copy(update={"cause": "operator_request"})
    plan = planner.plan(diagnosis=request, cloud_events=[], policy=PolicySettings(), now=NOW)
    assert [s.action for s in plan.steps] == ["cordon"]


def test_an_azure_event_that_covers_several_vms_is_never_accepted_early() -> None:
    """Azure's `StartRequests` for an event's `EventId` starts it on every VM of its `Resources`: accepting it
    once this node is drained would reboot the other VMs before their own drains. A one-VM event is accepted
    early as before; an event covering several is drained and waited for."""
    base = _cloud("reboot", starts_in_s=900).model_copy(
        update={"cloud": "azure", "ack": (AckOption(method="azure.StartRequests"),)}
    )
    one = base.model_copy(update={"extended": {"EventId": "ev-1", "Resources": ["vmss_3"]}})
    assert [s.action for s in planner.maintenance_steps(one, policy=PolicySettings())] == [
        "cordon",
        "drain",
        "accept_cloud_event",
    ]
    several = base.model_copy(update={"extended": {"EventId": "ev-1", "Resources": ["vmss_3", "vmss_4"]}})
    assert [s.action for s in planner.maintenance_steps(several, policy=PolicySettings())] == ["cordon", "drain"]
    assert planner.shared_with(several) == ["vmss_3", "vmss_4"]


def test_finished_host_events_are_let_go_open_ones_never() -> None:
    """The view kept every host event for as long as the replica ran (tens of thousands of nodes, events each
    week: no bound). A finished event goes once it is `FINISHED_KEEP` (7 days) older than the newest report CLOUD
    showed; an open event, however old, stays, and so does a twin pair one of whose reports is still open."""
    view = FleetView()
    week = timedelta(days=7)
    old = _aws("imds", "ev-old", observed_at=NOW - 3 * week)
    view.on_cloud(old)
    view.on_cloud(_done(old, "completed", -3 * week.total_seconds() + 60))
    stale_open = _aws("imds", "ev-open", observed_at=NOW - 4 * week, not_before=NOW - 4 * week)  # never ended
    view.on_cloud(stale_open)
    pair = _aws("health_api", "arn:ev-pair#i-1", observed_at=NOW - 2 * week, not_before=NOW - 2 * week)
    twin = _aws("imds", "ev-pair", observed_at=NOW - 2 * week, not_before=NOW - 2 * week)
    view.on_cloud(pair)
    view.on_cloud(twin)
    view.on_cloud(_done(twin, "completed", -2 * week.total_seconds() + 60))  # Health never says it closed
    recent = _aws("eventbridge", "ev-recent", observed_at=NOW - 6 * timedelta(days=1))
    view.on_cloud(recent)
    view.on_cloud(_done(recent, "canceled", -6 * 86400 + 60))
    new = _aws("eventbridge", "ev-new", observed_at=NOW, not_before=NOW + week)
    view.on_cloud(new)
    view.on_cloud(_done(new, "canceled", 1))  # the newest report: CLOUD's time is now NOW
    kept = {key[1] for key in view.cloud["n1"]}
    assert "ev-old" not in kept  # finished three weeks before the newest report
    assert ("aws", "ev-old") not in view.cloud_channels
    assert {"ev-recent", "ev-new"} <= kept  # finished within the week
    assert {"ev-open", "arn:ev-pair#i-1", "ev-pair"} <= kept  # open, or a pair with an open report
    assert [e.provider_event_id for e in planner.host_events(view.cloud_events("n1"))] == ["ev-open"]


def test_finished_host_events_beyond_the_cap_are_let_go_oldest_first() -> None:
    view = FleetView(max_finished=3)
    open_ev = _aws("imds", "ev-open", observed_at=NOW - timedelta(hours=2))
    view.on_cloud(open_ev)
    for n in range(4):  # four events that end within the hour: the cap (3) is passed
        ev = _aws("eventbridge", f"ev-{n}", observed_at=NOW - timedelta(hours=1), not_before=NOW + timedelta(days=n))
        view.on_cloud(ev)
        view.on_cloud(_done(ev, "canceled", n))
    assert {key[1] for key in view.cloud["n1"]} == {"ev-open", "ev-1", "ev-2", "ev-3"}
