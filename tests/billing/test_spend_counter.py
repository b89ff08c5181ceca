"""The control plane's side of the gateway's spend counter (contract.spend): prices and limits in
the Redis mirrors, and the periodic check raising the counter to PostgreSQL's spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from berth.redis import names
from billing import spend
from billing.models import BillingAccount
from contract.spend import COUNTER_TTL_SECONDS, period_id
from models_registry.models import Price
from tenants import mirror as tenant_mirror
from tenants import plans
from tenants.constants import Role
from tests.billing.usage import record
from tests.factories import TenantFactory, UserFactory, member
from tests.registry.factories import ModelFactory, PriceFactory, priced_model

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def model_prices(redis_client, name: str) -> tuple:
    return tuple(redis_client.hmget(names().model(name), ["price_input_micros", "price_output_micros"]))


def test_the_model_mirror_carries_the_price_in_micros(redis_client):
    priced_model("priced-m", "0.15", "0.60")
    ModelFactory(name="free-m")
    assert model_prices(redis_client, "priced-m") == ("150000", "600000")
    assert model_prices(redis_client, "free-m") == (None, None)
    assert redis_client.hget(names().model("free-m"), "served_name") == "free-m"


def test_a_new_price_is_published_at_once(redis_client):
    model = priced_model("repriced", "1", "2")
    PriceFactory(model=model, input_per_million=Decimal("0.000001"), output_per_million=Decimal("3.5"))
    assert model_prices(redis_client, "repriced") == ("1", "3500000")


def test_a_scheduled_price_is_published_when_it_takes_effect(redis_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    model = priced_model("scheduled", "1", "2")
    Price.objects.create(
        model=model,
        input_per_million=Decimal("5"),
        output_per_million=Decimal("6"),
        effective_from=NOW + timedelta(hours=1),
    )
    spend.check_all()
    assert model_prices(redis_client, "scheduled") == ("1000000", "2000000")  # not yet

    time_machine.move_to(NOW + timedelta(hours=1, seconds=1), tick=False)
    spend.check_all()
    assert model_prices(redis_client, "scheduled") == ("5000000", "6000000")
    assert spend.republish_prices() == []  # nothing changed since


def test_the_tenant_mirror_carries_the_spend_limit(client, redis_client):
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER, email="owner@limit.test")
    tenant_mirror.publish_tenant(tenant)
    name = names().tenant(tenant.pk)
    assert redis_client.hget(name, "spend_limit_micros") == ""  # no limit

    # The account's limit, set in the console's settings.
    client.force_login(owner)
    form = {"form": "billing", "billing-alert_thresholds": ["100"], "billing-spend_limit": "12.34"}
    assert client.post("/settings/", form).status_code == 302
    assert redis_client.hget(name, "spend_limit_micros") == "12340000"

    # Without one, the plan's limit; changing the plan's limit republishes its tenants.
    assert client.post("/settings/", form | {"billing-spend_limit": ""}).status_code == 302
    assert redis_client.hget(name, "spend_limit_micros") == ""
    plan = tenant.plan
    plan.monthly_spend_limit = Decimal("5")
    plans.save_plan(plan=plan)
    assert redis_client.hget(name, "spend_limit_micros") == "5000000"


def test_a_limit_set_in_the_admin_reaches_the_mirror(client, redis_client):
    tenant = TenantFactory()
    tenant_mirror.publish_tenant(tenant)
    account = spend.account_for(tenant)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    url = f"/admin/billing/billingaccount/{account.pk}/change/"
    form = {"tenant": str(tenant.pk), "spend_limit": "3.50", "alert_thresholds": "[50]", "billing_email": ""}
    response = client.post(url, form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert redis_client.hget(names().tenant(tenant.pk), "spend_limit_micros") == "3500000"


def test_the_spend_check_repairs_a_limit_changed_without_signals(redis_client):
    tenant = TenantFactory()
    tenant_mirror.publish_tenant(tenant)
    BillingAccount.objects.update_or_create(tenant=tenant)
    BillingAccount.objects.filter(tenant=tenant).update(spend_limit=Decimal("7"))  # no signal
    assert redis_client.hget(names().tenant(tenant.pk), "spend_limit_micros") == ""
    spend.check_tenant(tenant=tenant, now=NOW)
    assert redis_client.hget(names().tenant(tenant.pk), "spend_limit_micros") == "7000000"


@pytest.fixture
def spender():
    priced_model("chat-c", "1.00", "2.00")
    tenant = TenantFactory()
    BillingAccount.objects.create(tenant=tenant, spend_limit=Decimal("100"), alert_thresholds=[])
    return tenant


def counter(tenant, now=NOW) -> str:
    return names().spend_counter(tenant.pk, period_id("month", now))


def test_the_check_raises_the_counter_to_the_exact_spend(spender, redis_client):
    record(spender, "chat-c", NOW - timedelta(hours=1), 1_234_567, 1)  # $1.234567 + $0.000002
    record(spender, "chat-c", NOW - timedelta(days=40), 9_000_000, 0)  # an earlier period
    key = counter(spender)
    assert key.endswith(f"q:{{{spender.pk}}}:spend:m202611")

    status = spend.check_tenant(tenant=spender, now=NOW)

    assert status.spend_micros == 1_234_569 and status.counter_raised
    assert redis_client.get(key) == "1234569"
    assert 0 < redis_client.ttl(key) <= COUNTER_TTL_SECONDS
    # The blocked flag and its rounding are as before.
    assert status.spend == Decimal("1.23") and not status.blocked


def test_the_check_never_lowers_the_counter(spender, redis_client):
    key = counter(spender)
    redis_client.set(key, 5_000_000)  # the gateway counted requests not in PostgreSQL yet
    record(spender, "chat-c", NOW - timedelta(hours=1), 2_000_000, 0)
    status = spend.check_tenant(tenant=spender, now=NOW)
    assert not status.counter_raised and redis_client.get(key) == "5000000"

    redis_client.incrby(key, 1)  # the gateway keeps adding
    record(spender, "chat-c", NOW - timedelta(hours=1), 4_000_000, 0)  # $6 in PostgreSQL now
    assert spend.check_tenant(tenant=spender, now=NOW).counter_raised
    assert redis_client.get(key) == "6000000"


def test_the_counter_follows_the_billing_period_setting(spender, redis_client, settings):
    settings.BILLING_PERIOD = "day"
    record(spender, "chat-c", NOW - timedelta(hours=1), 1_000_000, 0)
    record(spender, "chat-c", NOW - timedelta(days=1), 1_000_000, 0)  # yesterday: not this period
    spend.check_tenant(tenant=spender, now=NOW)
    assert redis_client.get(names().spend_counter(spender.pk, "d20261120")) == "1000000"


def test_no_usage_writes_no_counter(spender, redis_client):
    spend.check_tenant(tenant=spender, now=timezone.now())
    assert redis_client.keys("*spend:*") == []
