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


async def test_a_relay_that_never_answers_is_a_failed_accept_not_an_exception() -> None:
    """The session's total timeout raises TimeoutError, not a ClientError: it is the step's failure (before, it
    escaped the provider)."""
    import asyncio

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    now = datetime.now(tz=UTC)
    event = CloudSystemEvent(
        cluster="c1", node="vm1", cloud="azure", channel="imds", provider_event_type="Reboot",
        provider_event_id="ev-2#vm1", action="reboot", cause="planned_maintenance", phase="scheduled",
        instance_id="vm1", not_before=now + timedelta(minutes=15), ack=(AckOption(method="azure.StartRequests"),),
        observed_at=now, extended={"EventId": "ev-2", "Resources": ["vm1"]},
    )  # fmt: skip
    provider = AzureScheduledEvents(CloudSettings(azure_imds_url=f"http://127.0.0.1:{port}", request_timeout_s=0.5))
    try:
        outcome = await provider.accept_event(event=event)
    finally:
        await provider.close()
        server.close()
    assert not outcome.ok and "unreachable" in outcome.detail
