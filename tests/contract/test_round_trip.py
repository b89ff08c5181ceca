"""The control plane publishes with its real mirror functions; the gateway's readers read it back.

Both sides take their Redis names from ``contract``, so this test fails if either spells one on
its own (a prefix, a key, a hash field, an invalidation message) and the other does not follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from gateway.auth import Authenticator
from gateway.config import GatewaySettings
from gateway.errors import GatewayError
from gateway.routing import Router
from models_registry import mirror as model_mirror
from provisioning import routing
from provisioning.constants import WorkerState
from provisioning.models import Worker
from tenants import keys, mirror
from tests.factories import TenantFactory
from tests.registry.factories import DeploymentFactory, NodeFactory, priced_model

pytestmark = pytest.mark.django_db(transaction=True)


def gateway_settings() -> GatewaySettings:
    return GatewaySettings(
        redis_url=settings.REDIS_URL,
        redis_prefix=settings.REDIS_PREFIX,
        key_peppers=",".join(f"{pid}:{secret}" for pid, secret in settings.KEY_PEPPERS.items()),
        debug_raw="1" if settings.DEBUG else "0",
        internal_token="i" * 40,
        key_cache_seconds=1.0,
        route_cache_seconds=1.0,
    )


def on_gateway(check: Callable[[Authenticator, Router], Awaitable[Any]]) -> Any:
    """Run ``check`` against a gateway's authenticator and router on their own Redis client."""

    async def main() -> Any:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        config = gateway_settings()
        auth, router = Authenticator(client, config), Router(client, config)
        auth.on_other = router.invalidate
        try:
            return await check(auth, router)
        finally:
            await client.aclose()

    return asyncio.run(main())


def bearer(plaintext: str) -> dict[bytes, bytes]:
    return {b"authorization": f"Bearer {plaintext}".encode()}


def test_a_published_key_and_tenant_authenticate_on_the_gateway():
    tenant = TenantFactory()
    created = keys.create_api_key(tenant=tenant, name="round trip", allowed_models=["m1"])
    assert mirror.publish_key(created.api_key)

    principal = on_gateway(lambda auth, _: auth.authenticate(bearer(created.plaintext)))

    assert principal.key.key_id == str(created.api_key.pk)
    assert principal.key.allowed_models == frozenset({"m1"})
    assert principal.tenant.tenant_id == str(tenant.pk)
    assert principal.tenant.status == "active"
    assert principal.tenant.plan["rpm"] == tenant.plan.requests_per_minute


def test_a_revoked_key_is_refused_and_a_suspended_tenant_is_forbidden():
    tenant = TenantFactory()
    revoked = keys.create_api_key(tenant=tenant, name="revoked")
    kept = keys.create_api_key(tenant=tenant, name="kept")
    keys.revoke_api_key(api_key=revoked.api_key)
    tenant.status = "suspended"
    tenant.save()
    assert mirror.publish_tenant(tenant)

    async def check(auth: Authenticator, _: Router) -> list[int]:
        statuses = []
        for plaintext in (revoked.plaintext, kept.plaintext):
            try:
                await auth.authenticate(bearer(plaintext))
            except GatewayError as exc:
                statuses.append(exc.status)
        return statuses

    assert on_gateway(check) == [401, 403]


def test_a_published_model_and_its_routes_are_what_the_router_reads():
    model = priced_model("round-trip-model", input_price="0.10", output_price="0.40", context_length=4096)
    deployment = DeploymentFactory(model=model)
    node = NodeFactory()
    worker = Worker.objects.create(
        deployment=deployment,
        node=node,
        url="http://127.0.0.1:9999/",
        api_key="engine-secret",
        state=WorkerState.READY,
    )
    Worker.objects.create(deployment=deployment, node=node, url="http://127.0.0.1:9998", api_key="x")
    assert model_mirror.publish_model(model)
    workers = Worker.objects.select_related("deployment__model", "node")
    assert routing.publish(routing.build(workers))

    async def check(_: Authenticator, router: Router):
        return (
            await router.model(model.name),
            await router.workers(model.name),
            await router.visible_models("any-tenant", frozenset()),
        )

    info, routed, visible = on_gateway(check)

    assert info.served_name == model.name
    assert info.context_length == 4096
    assert (info.price_input_micros, info.price_output_micros) == (100_000, 400_000)
    assert Decimal(info.price_output_micros) / 1_000_000 == Decimal("0.40")
    assert [(w.worker_id, w.url, w.api_key) for w in routed] == [
        (str(worker.pk), "http://127.0.0.1:9999", "engine-secret")  # only the READY worker
    ]
    assert [m.name for m in visible] == [model.name]


def test_invalidation_messages_reach_the_gateway_caches():
    """What the control plane publishes on the channel is what the gateway parses and acts on."""
    tenant = TenantFactory()
    created = keys.create_api_key(tenant=tenant, name="cached")
    model = priced_model("cached-model")
    assert model_mirror.publish_model(model)

    async def check(auth: Authenticator, router: Router) -> tuple[bool, bool]:
        listener = asyncio.create_task(auth.listen_invalidations())
        await asyncio.sleep(0.3)  # subscribed
        await auth.authenticate(bearer(created.plaintext))
        assert await router.model(model.name) is not None
        # The control plane acts, in its own thread (its own client), as it does in a request.
        await asyncio.to_thread(keys.revoke_api_key, api_key=created.api_key)
        await asyncio.to_thread(model_mirror.unpublish_model, model.name)
        await asyncio.sleep(0.3)  # well under the 1 s cache: only the messages can explain a miss
        refused = False
        try:
            await auth.authenticate(bearer(created.plaintext))
        except GatewayError:
            refused = True
        gone = await router.model(model.name) is None
        listener.cancel()
        return refused, gone

    assert on_gateway(check) == (True, True)
