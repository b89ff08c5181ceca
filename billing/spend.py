"""Spend limits and budget alerts.

Each tenant's spend this period (``billing.reports.period_spend``: usage × prices in effect,
rounded like invoice lines) is compared with its limit: the billing account's ``spend_limit``,
else the plan's ``monthly_spend_limit`` (neither: no limit). Crossing one of the account's alert
thresholds (percent; 50/80/100 by default) emails the owners and billing members **once per
threshold per period** (a unique ``SpendAlert`` row). At 100 % the Redis key
``q:{<tenant>}:spend_blocked`` is set until the period ends, and the gateway answers 429
``insufficient_quota``; raising the limit (``check_tenant`` runs on save) or the new period lifts it.
Celery beat runs ``check_all`` every ``BERTH_SPEND_CHECK_SECONDS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from berth.redis import get_redis, rkey
from billing import money, notify, reports
from billing.models import BillingAccount, SpendAlert
from billing.periods import Period, period_containing
from tenants.models import Tenant

log = logging.getLogger("berth.billing")


@dataclass
class SpendStatus:
    spend: Decimal
    limit: Decimal | None
    period: Period
    blocked: bool
    alerts_sent: list[int]

    @property
    def percent(self) -> float | None:
        return None if self.limit is None else percent_of(self.spend, self.limit)


def percent_of(used, limit) -> float:
    """``used`` as a percentage of ``limit``; a zero limit is already all used."""
    if limit == 0:
        return 100.0
    return float(used * 100 / limit)


def account_for(tenant: Tenant) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(
        tenant=tenant, defaults={"alert_thresholds": list(settings.SPEND_ALERT_THRESHOLDS)}
    )
    return account


def limit_for(tenant: Tenant, account: BillingAccount | None = None) -> Decimal | None:
    account = account or BillingAccount.objects.filter(tenant=tenant).first()
    if account is not None and account.spend_limit is not None:
        return account.spend_limit
    return tenant.plan.monthly_spend_limit


def blocked_key(tenant_id) -> str:
    return rkey("q", "{%s}" % tenant_id, "spend_blocked")  # noqa: UP031 - Redis Cluster hash tag


def check_tenant(*, tenant: Tenant, now: datetime | None = None) -> SpendStatus:
    now = now or timezone.now()
    account = account_for(tenant)
    period = period_containing(now)
    spend = reports.spend(tenant, period.start, period.end)
    limit = limit_for(tenant, account)
    status = SpendStatus(spend, limit, period, blocked=False, alerts_sent=[])
    if limit is not None:
        status.blocked = spend >= limit
        percent = status.percent
        for threshold in sorted({int(t) for t in account.alert_thresholds or []}):
            if percent >= threshold and _record_alert(tenant, period, threshold, spend, limit):
                status.alerts_sent.append(threshold)
                _send_alert(tenant, status, threshold)
    _publish_block(tenant, status, now)
    return status


def _record_alert(tenant, period: Period, threshold: int, spend: Decimal, limit: Decimal) -> bool:
    try:
        with transaction.atomic():
            _, created = SpendAlert.objects.get_or_create(
                tenant=tenant,
                period_start=period.start,
                threshold=threshold,
                defaults={"spend": spend, "limit": limit},
            )
    except IntegrityError:  # a concurrent check recorded it first
        return False
    return created


def _send_alert(tenant: Tenant, status: SpendStatus, threshold: int) -> None:
    currency = settings.BILLING_CURRENCY
    spent = money.format_money(status.spend, currency)
    limit = money.format_money(status.limit, currency)
    lines = [
        f"{tenant.name} has used {threshold}% of its spend limit for {status.period.label}: "
        f"{spent} of {limit}.",
        "",
    ]
    if status.blocked:
        lines.append(
            "API requests are now refused (HTTP 429, insufficient_quota) until the limit is raised "
            f"in Settings or the period ends on {status.period.end:%d %B %Y} (UTC)."
        )
    else:
        lines.append("At 100% API requests are refused until the limit is raised or the period ends.")
    lines += ["", f"Change the limit or the alerts: {settings.WEB_PUBLIC_URL}/settings/"]
    transaction.on_commit(
        lambda: notify.send(tenant, f"{threshold}% of your spend limit used", "\n".join(lines))
    )


def _publish_block(tenant: Tenant, status: SpendStatus, now: datetime) -> None:
    key = blocked_key(tenant.pk)
    try:
        if status.blocked:
            ttl = max(1, int((status.period.end - now).total_seconds()))
            value = orjson.dumps({"spend": str(status.spend), "limit": str(status.limit)})
            get_redis().set(key, value, ex=ttl)
        else:
            get_redis().delete(key)
    except Exception:  # noqa: BLE001 - Redis down: the next check (every minute) repairs it
        log.exception("could not publish the spend block of %s", tenant.slug)


def check_all(*, now: datetime | None = None) -> int:
    """Check every active tenant; returns how many are blocked."""
    now = now or timezone.now()
    blocked = 0
    for tenant in Tenant.objects.select_related("plan").order_by("slug"):
        try:
            blocked += check_tenant(tenant=tenant, now=now).blocked
        except Exception:  # noqa: BLE001 - one tenant's failure must not stop the others
            log.exception("spend check failed for %s", tenant.slug)
    return blocked
