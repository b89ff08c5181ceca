"""The usage event from the gateway's writer to billing's reader, through the real stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from django.conf import settings

from berth.redis import names
from billing import checkpoints, usage
from billing.models import UsageRecord, UsageSource
from contract.usage import USAGE_SOURCES, WIRE_NAMES, MalformedUsageEvent, UsageEvent
from gateway.config import GatewaySettings
from gateway.metering import Metering
from gateway.quotas import Quotas
from gateway.redis_pipe import make_pipe
from tests.factories import TenantFactory


def gateway_settings() -> GatewaySettings:
    return GatewaySettings(
        redis_url=settings.REDIS_URL,
        redis_prefix=settings.REDIS_PREFIX,
        key_peppers=",".join(f"{pid}:{secret}" for pid, secret in settings.KEY_PEPPERS.items()),
        debug_raw="1" if settings.DEBUG else "0",
        internal_token="i" * 40,
    )


def on_metering(action) -> Any:
    async def main() -> Any:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        config = gateway_settings()
        hot = make_pipe(settings.REDIS_URL, client)
        metering = Metering(client, config, Quotas(client, config, hot))
        try:
            return await action(metering)
        finally:
            await hot.close()
            await client.aclose()

    return asyncio.run(main())


def event_for(tenant_id: str, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": f"req_{uuid.uuid4().hex}",
        "tenant_id": tenant_id,
        "key_id": str(uuid.uuid4()),
        "model": "round-trip",
        "occurred_at_ms": int(time.time() * 1000),
        "endpoint": "chat",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "status": "ok",
        "http_status": 200,
        "latency_ms": 42,
        "ttft_ms": 9,
        "worker": "w1",
        "usage_source": "tokenizer",
        "cached_tokens": 5,
        "service_tier": "flex",
        "queue_ms": 120,
        "batch_id": "batch_0123456789abcdef01234567",
    }
    return UsageEvent(**{**values, **fields})


@pytest.mark.django_db(transaction=True)
def test_what_the_gateway_records_is_what_billing_writes():
    tenant = TenantFactory()
    event = event_for(str(tenant.pk))
    usage.ensure_group()

    on_metering(lambda metering: metering.record(event, None))
    assert usage.consume_batch(consumer="test", block_ms=None) == 1

    record = UsageRecord.objects.get(request_id=event.request_id)
    assert (record.tenant_id, str(record.api_key_id), record.model, record.endpoint) == (
        tenant.pk,
        event.key_id,
        "round-trip",
        "chat",
    )
    assert (record.prompt_tokens, record.completion_tokens, record.status, record.http_status) == (
        11,
        7,
        "ok",
        200,
    )
    assert (record.latency_ms, record.ttft_ms, record.worker_id, record.usage_source) == (
        42,
        9,
        "w1",
        "tokenizer",
    )
    assert record.cached_tokens == 5
    assert (record.service_tier, record.queue_ms, record.batch_id) == (
        "flex",
        120,
        "batch_0123456789abcdef01234567",
    )
    assert int(record.occurred_at.timestamp() * 1000) == event.occurred_at_ms


def test_tier_queue_and_batch_are_absent_at_their_defaults():
    plain = event_for(str(uuid.uuid4()), service_tier="default", queue_ms=0, batch_id=None)
    assert not {"st", "q", "b"} & set(plain.to_wire())
    assert UsageEvent.decode(plain.encode()) == plain


@pytest.mark.parametrize(
    "change", [{"st": "gold"}, {"st": None}, {"q": -1}, {"q": "5"}, {"b": ""}, {"b": "x" * 65}, {"b": 3}]
)
def test_a_bad_tier_queue_time_or_batch_id_is_malformed(change):
    wire = event_for(str(uuid.uuid4())).to_wire()
    with pytest.raises(MalformedUsageEvent):
        UsageEvent.from_wire({**wire, **change})


def test_cached_tokens_travel_as_ct_and_are_absent_when_there_are_none():
    cached = event_for(str(uuid.uuid4()), cached_tokens=8)
    assert cached.to_wire()["ct"] == 8
    assert UsageEvent.decode(cached.encode()).cached_tokens == 8
    plain = event_for(str(uuid.uuid4()), cached_tokens=0)
    assert "ct" not in plain.to_wire()  # byte-identical to what gateways wrote before the field
    assert UsageEvent.decode(plain.encode()).cached_tokens == 0


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_of_a_dead_gateway_is_billed_as_lost():
    tenant = TenantFactory()
    event = event_for(str(tenant.pk))
    usage.ensure_group()

    on_metering(lambda metering: metering.checkpoint(event))  # ...and the gateway dies
    assert checkpoints.bill_lost_streams(now_ms=int(time.time() * 1000) + 10**9) == 1
    assert usage.consume_batch(consumer="test", block_ms=None) == 1

    record = UsageRecord.objects.get(request_id=event.request_id)
    assert (record.status, record.usage_source, record.prompt_tokens) == ("gateway_lost", "checkpoint", 11)


def test_the_wire_format_is_what_earlier_gateways_wrote():
    """Events already in a stream when the gateway is upgraded stay readable, byte for byte."""
    earlier = {
        "id": "req_1",
        "t": str(uuid.uuid4()),
        "k": str(uuid.uuid4()),
        "m": "m",
        "ep": "chat",
        "p": 3,
        "c": 4,
        "s": "ok",
        "h": 200,
        "l": 5,
        "f": None,
        "w": "w1",
        "ts": 1_700_000_000_000,
    }
    event = UsageEvent.from_fields({"e": orjson.dumps(earlier)})
    assert (event.prompt_tokens, event.completion_tokens, event.usage_source) == (3, 4, None)
    assert event.encode() == orjson.dumps(earlier)
    assert UsageEvent.from_fields(event.to_fields()) == event


def test_the_dataclass_is_what_the_wire_mapping_and_the_database_know():
    assert set(UsageSource.values) == USAGE_SOURCES


@pytest.mark.parametrize(
    "change",
    [
        {"t": "not-a-uuid"},
        {"k": "not-a-uuid"},
        {"id": ""},
        {"id": "x" * 65},
        {"m": ""},
        {"ts": 0},
        {"ts": "1700000000000"},
        {"p": -1},
        {"c": 2**31},
        {"h": True},
        {"w": 5},
        {"u": "guess"},
        {"ct": -1},
        {"ct": "3"},
        {"ct": 12},  # more than the 11 prompt tokens
    ],
)
def test_billing_refuses_what_postgresql_could_not_take(change):
    wire = event_for(str(uuid.uuid4())).to_wire()
    UsageEvent.from_wire(wire)  # the unchanged event is fine
    with pytest.raises(MalformedUsageEvent):
        UsageEvent.from_wire({**wire, **change})


@pytest.mark.parametrize(
    "fields", [None, {}, {"e": ""}, {"e": "not json"}, {"e": "[1]"}, {"e": '{"id": "x"}'}]
)
def test_malformed_entries_are_refused(fields):
    with pytest.raises(MalformedUsageEvent):
        UsageEvent.from_fields(fields)


def test_the_stream_name_is_the_contracts(redis_client):
    assert names().usage_stream() == settings.REDIS_PREFIX + "usage"


def test_the_wire_names_are_the_documented_ones_in_order():
    event = event_for(str(uuid.uuid4()))
    assert list(event.to_wire()) == list(WIRE_NAMES.values())
    assert UsageEvent.from_wire(event.to_wire()) == event
