"""Spend limit end to end: metered traffic → spend check → the real SDK sees 429 insufficient_quota."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing import spend
from billing.models import BillingAccount, UsageRecord
from models_registry.models import Price
from tests.gateway.conftest import make_key, make_tenant, register_model
from tests.gateway.test_usage import drain
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db


def test_the_gateway_refuses_once_the_limit_is_spent_and_serves_again_when_raised(
    gateway, engines, redis_client
):
    tenant = make_tenant()
    name = register_model(redis_client, engines)
    # $1,000 per million prompt tokens: a few requests spend a cent.
    Price.objects.create(
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
