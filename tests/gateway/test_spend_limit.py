"""Spend limits: the gateway's own per-request counter, and the periodic check from PostgreSQL.

The gateway adds each settled request's cost to the tenant's Redis counter for the billing period
(``contract.spend``) and refuses at the limit, so the limit holds within one request with no
usage consumer, Celery or PostgreSQL involved; billing's periodic check stays the record.
"""

from __future__ import annotations

import time
from decimal import Decimal

import openai
import pytest

from berth.redis import names
from billing import spend
from billing.models import BillingAccount, UsageRecord
from contract import invalidation
from contract import spend as spend_counter
from models_registry import mirror as registry_mirror
from models_registry.models import Price
from tests.gateway.conftest import make_key, make_tenant, register_model, set_routes, start_gateway
from tests.gateway.test_usage import drain
from tests.registry.factories import ModelFactory, PriceFactory

pytestmark = pytest.mark.django_db


def test_the_gateway_refuses_once_the_limit_is_spent_and_serves_again_when_raised(
    gateway, engines, redis_client
):
    tenant = make_tenant()
    name = register_model(redis_client, engines)
    # $1,000 per million prompt tokens: a few requests spend a cent.
    PriceFactory(
        model=ModelFactory(name=name), input_per_million=Decimal("1000"), output_per_million=Decimal("1000")
    )
    BillingAccount.objects.create(tenant=tenant, spend_limit=Decimal("0.05"), alert_thresholds=[])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)

    def ask():
        return client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "one two three four five"}], max_tokens=5
        )

    while not spend.check_tenant(tenant=tenant).blocked:
        ask()
        drain()
    spent = spend.check_tenant(tenant=tenant).spend
    assert spent >= Decimal("0.05")
    records = UsageRecord.objects.filter(tenant=tenant)
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in records)
    assert spent == (Decimal(tokens) * 1000 / 1_000_000).quantize(Decimal("0.01"))

    with pytest.raises(openai.RateLimitError) as refused:
        ask()
    assert refused.value.code == "insufficient_quota"
    assert "spend limit" in refused.value.message

    BillingAccount.objects.filter(tenant=tenant).update(spend_limit=Decimal("10"))
    assert not spend.check_tenant(tenant=tenant).blocked
    assert ask().choices[0].message.content


def test_the_limit_holds_within_one_request_with_no_consumer_running(engines, redis_client):
    daily = start_gateway(BERTH_BILLING_PERIOD="day")
    try:
        tenant = make_tenant()
        priced = register_model(redis_client, engines)
        free = register_model(redis_client, engines)
        # What the control plane mirrors: prices per million tokens and the limit, in micro-units.
        redis_client.hset(
            names().model(priced),
            mapping={"price_input_micros": 1000 * 1_000_000, "price_output_micros": 2000 * 1_000_000},
        )
        key = make_key(tenant)  # (publishing a key republishes its tenant: before the limit)
        redis_client.hset(names().tenant(tenant.pk), "spend_limit_micros", 50_000)
        counter = names().spend_counter(tenant.pk, spend_counter.period_id("day"))
        client = openai.OpenAI(base_url=daily.url + "/v1", api_key=key, max_retries=0)

        def ask(model):
            return client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "one two three four five"}], max_tokens=5
            )

        assert ask(free).usage.prompt_tokens == 6
        assert redis_client.get(counter) is None  # a free model costs nothing
        # 6 prompt tokens at $1,000/M + 5 completion tokens at $2,000/M = 16,000 micro-dollars each:
        # three requests (48,000) stay under 50,000, the fourth is admitted and crosses it.
        for _ in range(4):
            ask(priced)
        assert int(redis_client.get(counter)) == 4 * 16_000
        assert 0 < redis_client.ttl(counter) <= spend_counter.COUNTER_TTL_SECONDS
        with pytest.raises(openai.RateLimitError) as refused:
            ask(priced)
        assert refused.value.code == "insufficient_quota" and "spend limit" in refused.value.message
        assert "retry-after" not in refused.value.response.headers
        with pytest.raises(openai.RateLimitError):
            ask(free)  # the tenant is out of budget, whatever the model
        assert int(redis_client.get(counter)) == 4 * 16_000  # refused requests cost nothing

        # The admin raises the limit: the mirror changes and the gateway is told.
        redis_client.hset(names().tenant(tenant.pk), "spend_limit_micros", 1_000_000)
        redis_client.publish(names().invalidate_channel(), invalidation.tenant(tenant.pk))
        deadline = time.monotonic() + 3
        while True:
            try:
                assert ask(priced).choices
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        daily.stop()


def test_no_limit_in_the_mirror_means_no_limit(gateway, engines, redis_client):
    tenant = make_tenant()
    model = register_model(redis_client, engines)
    redis_client.hset(names().model(model), "price_input_micros", 10**12)
    key = make_key(tenant)
    redis_client.hset(names().tenant(tenant.pk), "spend_limit_micros", "")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for _ in range(3):
        assert client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        ).choices
    counter = names().spend_counter(tenant.pk, spend_counter.period_id("month"))
    assert int(redis_client.get(counter)) == 3 * 2 * 1_000_000  # 2 prompt tokens at $1M/M, counted


def test_a_limit_set_by_the_control_plane_holds_at_the_gateway_before_any_usage_is_ingested(
    gateway, engines, redis_client
):
    tenant = make_tenant()
    model = ModelFactory()
    Price.objects.create(model=model, input_per_million=Decimal("1000"), output_per_million=Decimal("1000"))
    assert registry_mirror.publish_model(model)  # the price reaches the model mirror
    set_routes(redis_client, model.name, engines)
    BillingAccount.objects.create(tenant=tenant, spend_limit=Decimal("0.05"), alert_thresholds=[])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    served = 0
    with pytest.raises(openai.RateLimitError) as refused:
        while served < 20:
            client.chat.completions.create(
                model=model.name,
                messages=[{"role": "user", "content": "one two three four five"}],
                max_tokens=5,
            )
            served += 1
    # 11 tokens at $1,000/M = $0.011 each: four stay under $0.05, the fifth crosses it, no sixth.
    assert served == 5 and refused.value.code == "insufficient_quota"
    counter = names().spend_counter(tenant.pk, spend_counter.period_id("month"))
    assert int(redis_client.get(counter)) == 5 * 11_000
    # PostgreSQL stays the record: ingesting the usage and checking agrees, and lowers nothing.
    drain()
    assert spend.check_tenant(tenant=tenant).blocked
    assert int(redis_client.get(counter)) == 5 * 11_000
