"""Spend limits: alerts at 50/80/100 % once per threshold per period, and the gateway's block."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail

from billing import spend
from billing.models import BillingAccount, SpendAlert
from tests.billing.usage import record
from tests.factories import TenantFactory, member
from tests.registry.factories import priced_model

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


@pytest.fixture
def tenant(db):
    priced_model("chat-s", "1.00", "2.00")
    tenant = TenantFactory()
    member(tenant, "owner", email="owner@example.test")
    member(tenant, "billing", email="books@example.test")
    member(tenant, "member", email="dev@example.test")
    BillingAccount.objects.create(tenant=tenant, spend_limit=Decimal("10.00"), alert_thresholds=[50, 80, 100])
    return tenant


def spend_dollars(tenant, dollars: int, at=NOW):
    record(tenant, "chat-s", at - timedelta(hours=1), dollars * 1_000_000, 0)


@pytest.mark.django_db(transaction=True)
def test_alerts_go_out_once_per_threshold_and_100_percent_blocks(tenant, redis_client, settings):
    key = spend.blocked_key(tenant.pk)
    spend_dollars(tenant, 4)
    status = spend.check_tenant(tenant=tenant, now=NOW)
    assert status.spend == Decimal("4.00") and status.alerts_sent == [] and not status.blocked
    assert mail.outbox == []

    spend_dollars(tenant, 2)  # $6: 60 %
    assert spend.check_tenant(tenant=tenant, now=NOW).alerts_sent == [50]
    assert spend.check_tenant(tenant=tenant, now=NOW).alerts_sent == []  # not twice
    assert len(mail.outbox) == 1
    alert = mail.outbox[0]
    assert "50% of your spend limit" in alert.subject
    assert sorted(alert.to) == ["books@example.test", "owner@example.test"]  # not plain members
    assert "$6.00 of $10.00" in alert.body
    assert redis_client.exists(key) == 0

    spend_dollars(tenant, 5)  # $11: over the limit, 80 and 100 at once
    status = spend.check_tenant(tenant=tenant, now=NOW)
    assert status.alerts_sent == [80, 100] and status.blocked
    assert len(mail.outbox) == 3
    assert "refused" in mail.outbox[-1].body
    # Blocked until the period ends (the gateway refuses while the key exists).
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= int((datetime(2026, 12, 1, tzinfo=UTC) - NOW).total_seconds())
    assert SpendAlert.objects.filter(tenant=tenant).count() == 3

    # Raising the limit lifts the block at once; no new alert for thresholds already sent.
    BillingAccount.objects.filter(tenant=tenant).update(spend_limit=Decimal("100.00"))
    assert not spend.check_tenant(tenant=tenant, now=NOW).blocked
    assert redis_client.exists(key) == 0
    assert len(mail.outbox) == 3


@pytest.mark.django_db(transaction=True)
def test_a_new_period_starts_fresh(tenant, redis_client):
    spend_dollars(tenant, 12)
    assert spend.check_tenant(tenant=tenant, now=NOW).blocked
    december = datetime(2026, 12, 2, tzinfo=UTC)
    status = spend.check_tenant(tenant=tenant, now=december)
    assert status.spend == Decimal("0.00") and not status.blocked
    assert redis_client.exists(spend.blocked_key(tenant.pk)) == 0
    spend_dollars(tenant, 6, at=december)
    assert spend.check_tenant(tenant=tenant, now=december).alerts_sent == [50]  # again, new period


@pytest.mark.django_db
def test_the_plan_limit_applies_without_an_account_limit_and_none_means_unlimited(tenant, redis_client):
    BillingAccount.objects.filter(tenant=tenant).update(spend_limit=None)
    spend_dollars(tenant, 50)
    assert spend.check_tenant(tenant=tenant, now=NOW).limit is None
    assert redis_client.exists(spend.blocked_key(tenant.pk)) == 0
    tenant.plan.monthly_spend_limit = Decimal("20")
    tenant.plan.save()
    assert spend.check_tenant(tenant=tenant, now=NOW).blocked


@pytest.mark.django_db
def test_alerts_can_be_turned_off(tenant, redis_client):
    BillingAccount.objects.filter(tenant=tenant).update(alert_thresholds=[])
    spend_dollars(tenant, 11)
    status = spend.check_tenant(tenant=tenant, now=NOW)
    assert status.blocked and status.alerts_sent == []  # the block does not depend on alerts
    assert mail.outbox == []


@pytest.mark.django_db
def test_check_all_covers_every_tenant(tenant, redis_client):
    other = TenantFactory()
    BillingAccount.objects.create(tenant=other, spend_limit=Decimal("1"))
    spend_dollars(other, 2)
    assert spend.check_all(now=NOW) == 1
    assert redis_client.exists(spend.blocked_key(other.pk)) == 1
    assert redis_client.exists(spend.blocked_key(tenant.pk)) == 0


@pytest.mark.django_db
def test_a_new_free_tenant_is_not_blocked(redis_client):
    import importlib

    from django.apps import apps

    from tests.factories import free_plan

    # The free plan as the first data migration made it (transactional tests flush migration data).
    free = free_plan()
    free.monthly_spend_limit = Decimal("0.00")
    free.save()
    importlib.import_module("tenants.migrations.0004_free_plan_no_spend_limit").lift(apps, None)
    free.refresh_from_db()
    assert free.monthly_spend_limit is None
    tenant = TenantFactory(plan=free)
    assert not spend.check_tenant(tenant=tenant, now=NOW).blocked
    assert redis_client.exists(spend.blocked_key(tenant.pk)) == 0
