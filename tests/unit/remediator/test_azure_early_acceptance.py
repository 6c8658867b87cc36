"""Azure early acceptance (`StartRequests`) needs IMDS of the node's own VM, which the remediator's pod cannot
reach (169.254.169.254 there is the remediator's own VM; the NetworkPolicy gives it no route to it either).
With no relay configured (`CLOUD__AZURE_IMDS_URL` empty, the default) it is off: never tried, and a call
answers at once without touching the network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nodeheal.remediator.actions.cloud import AZURE_NO_EARLY_ACCEPTANCE, AzureScheduledEvents, Clouds
from nodeheal.remediator.settings import CloudSettings, RemediatorSettings
from nodeheal.schemas.cloud import AckOption, CloudSystemEvent


def test_azure_early_acceptance_is_off_unless_a_relay_is_configured() -> None:
    assert RemediatorSettings().cloud.azure_imds_url == ""
    assert not Clouds(CloudSettings(provider="azure")).accepts_early(None)
    auto = Clouds(CloudSettings(provider="auto"))
    assert not auto.accepts_early("azure")
    assert auto.accepts_early("alibaba")  # its own API, from anywhere
    # under the provider "none" every cloud is Unsupported, which answers for itself
    assert Clouds(CloudSettings(provider="none")).accepts_early("azure")
    relayed = Clouds(CloudSettings(provider="auto", azure_imds_url="http://relay.example:8080"))
    assert relayed.accepts_early("azure")


async def test_an_azure_accept_without_a_relay_answers_at_once_without_the_network() -> None:
    now = datetime.now(tz=UTC)
    event = CloudSystemEvent(
        cluster="c1",
        node="vm1",
        cloud="azure",
        channel="imds",
        provider_event_type="Reboot",
        provider_event_id="ev-1#vm1",
        action="reboot",
        cause="planned_maintenance",
        phase="scheduled",
        instance_id="vm1",
        not_before=now + timedelta(minutes=15),
        ack=(AckOption(method="azure.StartRequests"),),
        observed_at=now,
        extended={"EventId": "ev-1", "Resources": ["vm1"]},
    )
    provider = AzureScheduledEvents(CloudSettings())
    try:
        outcome = await provider.accept_event(event=event)
    finally:
        await provider.close()
    assert not outcome.ok
    assert outcome.detail == AZURE_NO_EARLY_ACCEPTANCE
