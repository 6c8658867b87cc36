"""Cloud actions behind one interface: reboot, redeploy, accept a scheduled event early.

`CloudProvider` is what the remediator calls; `AlibabaEcs` speaks the ECS OpenAPI through the official
SDK (`alibabacloud_ecs20140526`, endpoint configurable), `AzureScheduledEvents` approves a Scheduled
Event with `POST StartRequests` to the instance metadata endpoint. AWS and GCE fit the same interface
(`RebootInstances`, `ModifyInstanceEventStartTime`, `instances.performMaintenance`, ...) but their SDKs
(boto3, the Compute client) are not in the lock file: they answer with a clear "not supported", which
fails the rung and moves the ladder on; their host events are never accepted early (the planner plans no
accept step for them) — the node is drained within the lead and the event runs at its own time.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import aiohttp

from nodeheal.remediator.actions import ActionOutcome
from nodeheal.remediator.settings import CloudSettings
from nodeheal.schemas.cloud import CloudSystemEvent

ALIBABA_PROVIDERS = frozenset({"alibaba", "auto"})
"""The `CloudSettings.provider` values under which a node can be an Alibaba ECS instance."""
ALIBABA_SDK = ("alibabacloud_ecs20140526.client", "alibabacloud_ecs20140526.models", "alibabacloud_tea_openapi.models")


def load_alibaba_sdk() -> None:
    """Import the ECS SDK. `Clouds` does it when it is built, at the service's start-up, whenever the
    provider can be Alibaba: the import takes seconds and would block the event loop (heartbeats, lease
    renewals) in the middle of a ladder, right when an action is due. Under another provider it is
    never imported (a third of the remediator's start-up CPU)."""
    for module in ALIBABA_SDK:
        importlib.import_module(module)


class CloudProvider(Protocol):
    name: str

    async def reboot(self, *, instance_id: str) -> ActionOutcome: ...

    async def redeploy(self, *, instance_id: str) -> ActionOutcome: ...

    async def accept_event(self, *, event: CloudSystemEvent) -> ActionOutcome: ...

    async def replace(self, *, instance_id: str, node_pool: str | None, token: str) -> ActionOutcome: ...

    async def close(self) -> None: ...


class Unsupported:
    """A cloud nodeheal cannot act on (yet): every call fails with the reason."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _no(self, what: str) -> ActionOutcome:
        return ActionOutcome(
            ok=False,
            detail=f"{what} is not supported for cloud {self.name!r}; configure "
            "NODEHEAL_REMEDIATOR_CLOUD__PROVIDER or act by hand",
        )

    async def reboot(self, *, instance_id: str) -> ActionOutcome:
        return self._no("reboot")

    async def redeploy(self, *, instance_id: str) -> ActionOutcome:
        return self._no("redeploy")

    async def accept_event(self, *, event: CloudSystemEvent) -> ActionOutcome:
        return self._no(f"accepting event {event.provider_event_id}")

    async def replace(self, *, instance_id: str, node_pool: str | None, token: str) -> ActionOutcome:
        return self._no("replacing an instance")

    async def close(self) -> None:
        return None


class AlibabaEcs:
    name = "alibaba"

    def __init__(self, settings: CloudSettings) -> None:
        if not settings.alibaba_access_key_id or not settings.alibaba_access_key_secret:
            msg = (
                "Alibaba cloud actions need credentials: set NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ACCESS_KEY_ID and "
                "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ACCESS_KEY_SECRET (a RAM user limited to ecs:RebootInstance, "
                "ecs:RedeployInstance, ecs:AcceptInquiredSystemEvent)"
            )
            raise ValueError(msg)
        endpoint = settings.alibaba_endpoint or f"ecs.{settings.alibaba_region}.aliyuncs.com"
        timeout_ms = int(settings.request_timeout_s * 1000)
        self.settings = settings
        from alibabacloud_ecs20140526.client import Client
        from alibabacloud_tea_openapi.models import Config

        self.client = Client(
            Config(
                access_key_id=settings.alibaba_access_key_id,
                access_key_secret=settings.alibaba_access_key_secret,
                endpoint=endpoint.removeprefix("http://").removeprefix("https://"),
                protocol=settings.alibaba_protocol,
                region_id=settings.alibaba_region,
                read_timeout=timeout_ms,
                connect_timeout=timeout_ms,
            )
        )

    @staticmethod
    def _error(what: str, exc: Exception) -> ActionOutcome:
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None) or str(exc)
        if not code:
            # no API answer (the SDK's UnretryableException after a read timeout, a reset connection): the call
            # may have run
            return ActionOutcome(
                ok=False,
                detail=f"Alibaba {what}: no answer ({type(exc).__name__}: {message[:200]}); it may have run",
                unknown=True,
            )
        return ActionOutcome(ok=False, detail=f"Alibaba {what} failed: {code}: {message}")

    async def reboot(self, *, instance_id: str) -> ActionOutcome:
        from alibabacloud_ecs20140526 import models

        request = models.RebootInstanceRequest(instance_id=instance_id, force_stop=self.settings.alibaba_force_stop)
        try:
            response = await self.client.reboot_instance_async(request)
        except Exception as exc:
            return self._error(f"RebootInstance {instance_id}", exc)
        return ActionOutcome(
            ok=True, detail=f"RebootInstance {instance_id} accepted (request {response.body.request_id})"
        )

    async def redeploy(self, *, instance_id: str) -> ActionOutcome:
        from alibabacloud_ecs20140526 import models

        request = models.RedeployInstanceRequest(instance_id=instance_id, force_stop=True)
        try:
            response = await self.client.redeploy_instance_async(request)
        except Exception as exc:
            return self._error(f"RedeployInstance {instance_id}", exc)
        return ActionOutcome(
            ok=True, detail=f"RedeployInstance {instance_id} accepted (request {response.body.request_id})"
        )

    async def accept_event(self, *, event: CloudSystemEvent) -> ActionOutcome:
        from alibabacloud_ecs20140526 import models

        """Run a scheduled event early with the API that matches it: an Inquiring event is accepted
        (AcceptInquiredSystemEvent); a scheduled SystemMaintenance.Reboot is answered by RebootInstance
        (the platform marks the event Avoided); a Redeploy by RedeployInstance (the caller made sure it was
        approved: local disks are lost). Never RedeployInstance for a reboot event."""
        methods = {a.method for a in event.ack}
        if event.cloud != "alibaba":  # with PROVIDER=alibaba every cloud name lands here: never another's event
            return ActionOutcome(
                ok=False, detail=f"{event.cloud} event {event.provider_event_id} is not ECS's: waiting for the platform"
            )
        if event.phase == "pending_approval" and "alibaba.AcceptInquiredSystemEvent" in methods:
            request = models.AcceptInquiredSystemEventRequest(
                event_id=event.provider_event_id, region_id=event.region or self.settings.alibaba_region
            )
            try:
                response = await self.client.accept_inquired_system_event_async(request)
            except Exception as exc:
                return self._error(f"AcceptInquiredSystemEvent {event.provider_event_id}", exc)
            return ActionOutcome(
                ok=True,
                detail=f"AcceptInquiredSystemEvent {event.provider_event_id} accepted "
                f"(request {response.body.request_id})",
            )
        if event.action == "reboot" and "alibaba.RebootInstance" in methods:
            outcome = await self.reboot(instance_id=event.instance_id)
            return ActionOutcome(outcome.ok, f"{outcome.detail} for reboot event {event.provider_event_id}")
        if event.action == "redeploy" and "alibaba.RedeployInstance" in methods:
            outcome = await self.redeploy(instance_id=event.instance_id)
            return ActionOutcome(outcome.ok, f"{outcome.detail} for redeploy event {event.provider_event_id}")
        return ActionOutcome(
            ok=False,
            detail=f"{event.provider_event_type} {event.provider_event_id} ({event.phase}) cannot be run early "
            f"(offered: {', '.join(sorted(methods)) or 'nothing'}); waiting for the platform",
        )

    async def replace(self, *, instance_id: str, node_pool: str | None, token: str) -> ActionOutcome:
        """Release the instance (DeleteInstance, Force) and recreate one from the node pool's launch template
        (RunInstances with LaunchTemplateId / LaunchTemplateVersion, Amount 1). Idempotent: an instance
        already released is not an error, and RunInstances carries `token` as its ClientToken, so a repeated
        call (a replica died between the two) returns the instance the first call created."""
        from alibabacloud_ecs20140526 import models

        template = self.settings.alibaba_launch_templates.get(node_pool or "")
        if not template:
            return ActionOutcome(
                ok=False,
                detail=f"no launch template for node pool {node_pool!r}: set NODEHEAL_REMEDIATOR_CLOUD__"
                "ALIBABA_LAUNCH_TEMPLATES (node pool → lt-id[:version]); nothing was released",
            )
        template_id, _, version = template.partition(":")
        released = f"released {instance_id} (DeleteInstance, Force)"
        try:
            await self.client.delete_instance_async(models.DeleteInstanceRequest(instance_id=instance_id, force=True))
        except Exception as exc:
            if getattr(exc, "code", None) != "InvalidInstanceId.NotFound":
                return self._error(f"DeleteInstance {instance_id}", exc)
            released = f"{instance_id} was already released"
        request = models.RunInstancesRequest(
            region_id=self.settings.alibaba_region,
            launch_template_id=template_id,
            launch_template_version=int(version) if version else None,
            amount=1,
            client_token=token[:64],
        )
        try:
            response = await self.client.run_instances_async(request)
        except Exception as exc:
            outcome = self._error(f"RunInstances from {template_id}", exc)
            return ActionOutcome(ok=False, detail=f"{released}; {outcome.detail}")
        sets = response.body.instance_id_sets
        created = ", ".join((sets.instance_id_set if sets else None) or []) or "?"
        return ActionOutcome(
            ok=True,
            detail=f"{released}; created {created} from launch template {template_id} "
            f"version {version or 'default'} of node pool {node_pool} (RunInstances)",
        )

    async def close(self) -> None:
        return None


class AzureScheduledEvents:
    """Approves Scheduled Events through IMDS (`POST StartRequests` to `azure_imds_url`). IMDS answers only on
    the VM itself: from the remediator's pod, 169.254.169.254 is the remediator's own VM, which would accept
    its own events, not the node's (and deploy/base/networkpolicies.yaml gives the remediator no route there).
    No relay to the node's IMDS exists, so `azure_imds_url` is empty by default and early acceptance is off
    (`Clouds.accepts_early`): the event runs at its NotBefore. The call works against a URL that answers for
    the node's VM (the IMDS emulator in the tests)."""

    name = "azure"

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.request_timeout_s))

    async def reboot(self, *, instance_id: str) -> ActionOutcome:
        return ActionOutcome(
            ok=False, detail="Azure reboot goes through ARM (not implemented); approve the event instead"
        )

    async def redeploy(self, *, instance_id: str) -> ActionOutcome:
        return ActionOutcome(
            ok=False, detail="Azure redeploy goes through ARM (not implemented); approve the event instead"
        )

    async def replace(self, *, instance_id: str, node_pool: str | None, token: str) -> ActionOutcome:
        return ActionOutcome(ok=False, detail="Azure instance replacement goes through ARM (not implemented)")

    async def accept_event(self, *, event: CloudSystemEvent) -> ActionOutcome:
        if not self.settings.azure_imds_url:
            return ActionOutcome(ok=False, detail=AZURE_NO_EARLY_ACCEPTANCE)
        url = f"{self.settings.azure_imds_url.rstrip('/')}/metadata/scheduledevents?api-version=2020-07-01"
        # the provider event id is `<EventId>#<vm>` (one per VM); StartRequests wants Azure's own EventId
        azure_id = str(event.extended.get("EventId") or event.provider_event_id.split("#", 1)[0])
        body = {"StartRequests": [{"EventId": azure_id}]}
        try:
            async with self.session.post(url, json=body, headers={"Metadata": "true"}) as response:
                text = await response.text()
                if response.status >= 300:
                    return ActionOutcome(
                        ok=False,
                        detail=f"Azure StartRequests for {azure_id}: HTTP {response.status}: {text[:200]}",
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:  # a relay that hangs: the session's total timeout
            return ActionOutcome(ok=False, detail=f"Azure IMDS at {url} unreachable: {exc!r}")
        return ActionOutcome(ok=True, detail=f"Azure StartRequests for {azure_id} accepted")

    async def close(self) -> None:
        await self.session.close()


AZURE_NO_EARLY_ACCEPTANCE = (
    "Azure early acceptance (StartRequests) is off: IMDS answers only on the node's own VM and no relay to it is"
    " configured (CLOUD__AZURE_IMDS_URL); the event runs at its NotBefore"
)


class Clouds:
    """One provider per cloud name, built lazily from the settings."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self._providers: dict[str, CloudProvider] = {}
        if settings.provider in ALIBABA_PROVIDERS:
            load_alibaba_sdk()

    def _name(self, cloud: str | None) -> str:
        return (cloud if self.settings.provider == "auto" else self.settings.provider) or "none"

    def accepts_early(self, cloud: str | None) -> bool:
        """Can a host event of `cloud` be run early here at all? Not an Azure one without `azure_imds_url`: the
        remediator then neither tries (no 15 s against an address that cannot answer, no `started` record that
        the flap quarantine counts as a reboot) nor records anything; the event runs at its NotBefore."""
        return not (self._name(cloud) == "azure" and not self.settings.azure_imds_url)

    def for_cloud(self, cloud: str | None) -> CloudProvider:
        name = self._name(cloud)
        if name not in self._providers:
            provider: CloudProvider
            if name == "alibaba":
                provider = AlibabaEcs(self.settings)
            elif name == "azure":
                provider = AzureScheduledEvents(self.settings)
            else:
                provider = Unsupported(name)
            self._providers[name] = provider
        return self._providers[name]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
