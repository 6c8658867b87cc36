"""The maintenance loop: host events (a cloud Reboot / Redeploy / Stop / Terminate of the machine) are
obeyed, not undone.

Every `maintenance_interval_s` each replica looks at the CLOUD view and the disruption ledger:

- a pending host event whose `not_before` is within `cloud_drain_lead_s` (or that is in progress): the
  node is cordoned and drained (every gate applies) and, when allowed, the event is accepted early with
  the API that matches it (RebootInstance / AcceptInquiredSystemEvent / Azure StartRequests; never a
  RedeployInstance for a reboot; a redeploy only after `nodeheal approve`), once per event. The budget
  slot is held under the episode `cloud:<cloud>:<event id>`.
- a pending host event we prepared for that the cloud moved beyond the lead (a reschedule; its episode holds
  the node's slot, or this replica prepared it): verified and uncordoned, its slot given back, the postponement
  recorded (`Remediator.postpone_host_event`); when it comes due again it is drained for again. A pending event
  beyond the lead that this replica has not looked at since it started is postponed once too (AUDIT decides:
  nothing is done for an episode that never took the node), so a move made while no replica that prepared it
  ran is judged as that replica would have.
- an event CLOUD shows finished (completed, avoided, canceled, failed) whose episode holds the node's
  slot: verified (a new boot id when it ran) and uncordoned, or escalated.
- a storm escalation this replica has still to record (its AUDIT record failed, or it took over a storm key
  that said "escalated, not recorded" at its start) is sent again (`Remediator.send_storm_escalations`), so it
  does not wait for the next diagnosis that reaches a capacity step.
- a budget slot past its `until` (`slot_hold_s`: its holder died and its diagnosis never came back) is
  given back with a record (`Remediator.expire_slot`): a cordon of ours still out is handed to a person
  (`escalate`), else the expiry is recorded (`none` / `skipped`).

No uncordon happens while such an event is pending within the lead time (`Remediator._finish`). The state
is CLOUD + the ledger + AUDIT, so a restarted replica picks up where the last one stopped; the node's
lease keeps two replicas from working on one node at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from nodeheal.remediator import planner
from nodeheal.remediator.audit import AuditRefusedError, AuditUnavailableError
from nodeheal.remediator.runner import Remediator
from nodeheal.runtime.jetstream import stop_if_cancelled

log = logging.getLogger("nodeheal.remediator.maintenance")


class MaintenanceLoop:
    def __init__(self, remediator: Remediator, *, interval_s: float) -> None:
        self.remediator = remediator
        self.interval_s = interval_s
        self._busy: dict[str, asyncio.Task[None]] = {}
        # caches (AUDIT and the ledger are the truth), of host events still open in the view only (`_forget`):
        self._prepared: set[str] = set()  # episodes whose preparation is complete
        self._postponed: dict[str, datetime | None] = {}  # episode → the start its postponement was done for
        # episodes whose schedule this replica has looked at since it started (prepared or postponed once): a
        # pending event beyond the lead that it has not is postponed once, whatever its caches say, so a move
        # made while this replica was not running (its caches empty, the slot given back by a hand-over) is
        # judged on AUDIT as the replica that prepared it would have (`Remediator.postpone_host_event`)
        self._looked: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance tick failed")
            # stopped by a cancel: one that landed as a KV or stream answer came must not be lost (Python 3.11's
            # `wait_for`, gh-86296), or the loop would go on cordoning and draining after the service stopped
            stop_if_cancelled()
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        for task in self._busy.values():
            task.cancel()
        await asyncio.gather(*self._busy.values(), return_exceptions=True)

    async def tick(self, now: datetime | None = None) -> None:
        r = self.remediator
        now = now or datetime.now(tz=UTC)
        if r.storm_unsent():
            try:
                await r.send_storm_escalations()
            except AuditUnavailableError:
                log.warning("storm escalations still not recorded", extra={"unsent": r.storm_unsent()})
        slots = {s.node: s for s in (await r.ledger.read())[0]}
        stop_if_cancelled()  # nothing new is started by a loop that was asked to stop
        for node, held in slots.items():
            if held.until <= now and node not in self._busy:
                self._spawn(node, r.expire_slot(held))
        r.view.end_overdue_spot_notices(now)  # spot notices nothing ended, 30 min past their time: over
        lead = r.policy.cloud_drain_lead_s
        open_episodes: set[str] = set()
        for node in list(r.view.cloud):
            events = [
                ev for ev in planner.latest_cloud_events(r.view.cloud_events(node)) if ev.action in planner.HOST_ACTIONS
            ]
            open_episodes.update(planner.cloud_episode(ev) for ev in events if not ev.is_terminal)
            if node in self._busy:
                continue
            for ev in events:
                episode = planner.cloud_episode(ev)
                slot = slots.get(node)
                if ev.is_terminal:
                    if slot is not None and slot.episode == episode:
                        self._spawn(node, r.finish_host_event(ev))
                        break
                elif planner.within(ev, seconds=lead, now=now):
                    if episode not in self._prepared:
                        self._spawn(node, r.prepare_for_host_event(ev), done=partial(self._was_prepared, episode))
                        break
                elif (
                    episode in self._prepared
                    or (slot is not None and slot.episode == episode)
                    or episode not in self._looked
                ) and (episode not in self._postponed or self._postponed[episode] != ev.not_before):
                    # moved beyond the lead after we prepared for it: the node need not stay out meanwhile
                    self._spawn(
                        node, r.postpone_host_event(ev), done=partial(self._was_postponed, episode, ev.not_before)
                    )
                    break
        self._forget(open_episodes)

    def _forget(self, open_episodes: set[str]) -> None:
        """The caches keep host events still open in the view only: a finished or let-go event is never
        prepared or postponed again (the caches grew by every host event the replica saw)."""
        self._prepared &= open_episodes
        self._looked &= open_episodes
        for episode in [e for e in self._postponed if e not in open_episodes]:
            del self._postponed[episode]

    def _was_prepared(self, episode: str) -> None:
        self._prepared.add(episode)
        self._looked.add(episode)
        self._postponed.pop(episode, None)  # a later move is postponed again, even back to a start said before

    def _was_postponed(self, episode: str, start: datetime | None) -> None:
        self._prepared.discard(episode)  # not prepared any more: drained for again when it comes due
        self._postponed[episode] = start
        self._looked.add(episode)

    def _spawn(self, node: str, work: object, *, done: Callable[[], None] | None = None) -> None:
        async def run() -> None:
            try:
                result = await work  # type: ignore[misc]
                if result == "ack" and done is not None:
                    done()
            except AuditRefusedError as exc:  # no input at hand: the refused record itself goes to the DLQ
                await self.remediator.keep_refused(exc)
            except Exception:
                log.exception("maintenance step failed", extra={"node": node})
            finally:
                self._busy.pop(node, None)

        self._busy[node] = asyncio.create_task(run())
