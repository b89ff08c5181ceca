"""Key last-use times: the gateway batches them into Redis, a Celery task writes them ≤ once a minute."""

from __future__ import annotations

import time

import httpx
import pytest
import time_machine
from django.utils import timezone

from berth.redis import names
from tenants.key_use import flush_key_last_used
from tenants.models import ApiKey
from tests.gateway.conftest import make_key, make_tenant

pytestmark = pytest.mark.django_db


def test_it_records_key_use_in_batches(gateway, redis_client, settings):
    tenant = make_tenant()
    key = make_key(tenant)
    api_key = ApiKey.objects.get(tenant=tenant)
    assert (
        httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
    )
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "none", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert response.status_code == 404
    deadline = time.monotonic() + 5
    while not redis_client.hget(names().key_last_used(), str(api_key.pk)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flush_key_last_used() == 1
    api_key.refresh_from_db()
    first = api_key.last_used_at
    assert first is not None and abs((timezone.now() - first).total_seconds()) < 10
    # Within the minute, a later use does not rewrite the row.
    redis_client.hset(names().key_last_used(), str(api_key.pk), int(time.time()) + 5)
    assert flush_key_last_used() == 0
    with time_machine.travel(time.time() + 120, tick=False):
        redis_client.hset(names().key_last_used(), str(api_key.pk), int(time.time()))
        assert flush_key_last_used() == 1
    assert flush_key_last_used() == 0  # nothing pending
