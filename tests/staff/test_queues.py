"""The Queues page: the admission queues the gateways share in Redis, per model, tier and tenant.

The state is written by the gateway's own admission script (``gateway.admission.STEP``), so the
page reads exactly what gateways write."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from berth.redis import names
from gateway import admission
from staff import queues
from tests.factories import TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def step(redis_client, model: str, op: str, gateway: str, capacity: int, *extra) -> list[int]:
    n = names()
    keys = [
        n.admission_slots(model),
        n.admission_alive(model),
        n.admission_entries(model),
        n.admission_granted(model),
        n.admission_virtual_time(model),
        n.admission_deadlines(model),
        *(n.admission_queue(model, tier) for tier in admission.BANDS),
    ]
    now = int(time.time() * 1000)
    script = redis_client.register_script(admission.STEP)
    args = [op, gateway, now, capacity, now + 60_000, n.admission_channel(), model, 0, *extra]
    return [int(x) for x in script(keys=keys, args=args)]


def enqueue(redis_client, model, gateway, entry, tier, tenant, cost=100) -> list[int]:
    deadline = int(time.time() * 1000) + 60_000
    band = admission.BANDS.index(tier) + 1
    return step(redis_client, model, "acquire", gateway, 1, entry, band, str(tenant), cost, 1, deadline, 100)


def test_the_page_shows_depth_and_oldest_wait_per_model_tier_and_tenant(client, redis_client):
    acme, globex = TenantFactory(name="Acme"), TenantFactory(name="Globex")
    assert enqueue(redis_client, "llama", "gw-a", "e0", "default", acme.pk)[0] == 1  # takes the one slot
    assert enqueue(redis_client, "llama", "gw-a", "e1", "default", acme.pk)[0] == 0  # waits
    assert enqueue(redis_client, "llama", "gw-b", "e2", "default", acme.pk, cost=50)[0] == 0
    assert enqueue(redis_client, "llama", "gw-b", "e3", "flex", globex.pk)[0] == 0
    assert enqueue(redis_client, "qwen", "gw-b", "e4", "priority", globex.pk)[0] == 1  # room: no wait
    time.sleep(0.25)

    snapshot = {q.model: q for q in queues.snapshot()}
    llama = snapshot["llama"]
    assert llama.slots_in_use == 1 and llama.gateways == 2
    assert (llama.tiers["default"].depth, llama.tiers["flex"].depth, llama.tiers["priority"].depth) == (
        2,
        1,
        0,
    )
    assert llama.tiers["default"].oldest_ms >= 250
    assert llama.tenants[("default", str(acme.pk))].tokens == 150
    assert snapshot["qwen"].depth == 0 and snapshot["qwen"].slots_in_use == 1

    client.force_login(UserFactory(is_staff=True))
    page = client.get(reverse("staff:queues"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Acme" in html and "Globex" in html and 'id="queues-by-tenant"' in html
    chart = page.context["queues_chart"]
    assert chart["labels"] == ["llama", "qwen"]
    assert chart["depth"]["default"] == [2, 0] and chart["depth"]["flex"] == [1, 0]

    # The slot is given back: the best waiter (default before flex) gets it, and the page says so.
    step(redis_client, "llama", "release", "gw-a", 1, 1)
    data = client.get(reverse("staff:queues-data"))
    assert data.status_code == 200
    assert data.context["queues_chart"]["depth"]["default"] == [1, 0]
    assert data.context["queues_chart"]["depth"]["flex"] == [1, 0]


def test_an_empty_queue_says_so(client):
    client.force_login(UserFactory(is_staff=True))
    page = client.get(reverse("staff:queues"))
    assert page.status_code == 200
    assert "No gateway has admitted requests through the queue" in page.content.decode()


@pytest.mark.parametrize("name", ["staff:queues", "staff:queues-data"])
def test_only_staff_see_the_queues(client, name):
    url = reverse(name)
    assert client.get(url).status_code == 302
    client.force_login(UserFactory())
    assert client.get(url).status_code == 403
