"""Spend limits and budget alerts.

Each tenant's spend this period (``billing.reports.period_spend``: usage × prices in effect,
rounded like invoice lines) is compared with its limit: the billing account's ``spend_limit``,
else the plan's ``monthly_spend_limit`` (neither: no limit). Crossing one of the account's alert
thresholds (percent; 50/80/100 by default) emails the owners and billing members **once per
threshold per period** (a unique ``SpendAlert`` row). At 100 % the tenant's ``spend_blocked`` key
(``contract``) is set until the period ends, and the gateway answers 429
``insufficient_quota``; raising the limit (``check_tenant`` runs on save) or the new period lifts it.
Celery beat runs ``check_all`` every ``BERTH_SPEND_CHECK_SECONDS``.

That check lags by up to a minute of traffic, so the gateway also keeps a per-tenant spend counter
in Redis (``contract.spend``: it adds each settled request's cost, priced from the model mirror at
the percent of the request's service tier, ``contract.spend.tier_cost_micros``, the percent
``billing.pricing`` bills; and it refuses admission once the counter reaches ``spend_limit_micros``
from the tenant mirror). The
check reconciles that counter with PostgreSQL: it raises it to the exact spend of the usage
records (never lowers it: events still in the usage stream are not in PostgreSQL yet), republishes
models whose price in effect changed (prices scheduled for later) and tenants whose mirrored limit
differs from ``limit_for``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from berth.redis import get_redis, names
from billing import money, notify, reports
from billing.models import BillingAccount, SpendAlert
from billing.periods import Period, period_containing
from contract.spend import COUNTER_TTL_SECONDS, period_id, to_micros
from tenants.models import Tenant
from webhooks import events as webhook_events

# Raise the counter to ARGV[1] (never lower it); atomic against the gateway's concurrent INCRBYs.
RAISE_COUNTER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

log = logging.getLogger("berth.billing")


@dataclass
class SpendStatus:
    spend: Decimal
    limit: Decimal | None
    period: Period
    blocked: bool
    alerts_sent: list[int]
    # The exact spend in micro-units (unrounded, what the gateway's counter adds up to).
    spend_micros: int = 0
    counter_raised: bool = False

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
    return names().spend_blocked(tenant_id)


def check_tenant(*, tenant: Tenant, now: datetime | None = None) -> SpendStatus:
    now = now or timezone.now()
    account = account_for(tenant)
    period = period_containing(now)
    lines = reports.priced(tenant, period.start, period.end)
    spend = reports.rounded_total(lines)
    limit = limit_for(tenant, account)
    status = SpendStatus(spend, limit, period, blocked=False, alerts_sent=[])
    status.spend_micros = to_micros(sum((line.exact_cost() for line in lines), Decimal(0)))
    if limit is not None:
        status.blocked = spend >= limit
        percent = percent_of(spend, limit)
        for threshold in sorted({int(t) for t in account.alert_thresholds or []}):
            if percent >= threshold and _record_alert(tenant, period, threshold, spend, limit):
                status.alerts_sent.append(threshold)
                _send_alert(tenant, status, threshold, limit)
                webhook_events.spend_threshold_on_commit(
                    tenant=tenant,
                    period=period,
                    threshold=threshold,
                    spend=spend,
                    limit=limit,
                    currency=settings.BILLING_CURRENCY,
                )
    _publish_block(tenant, status, now)
    status.counter_raised = _raise_counter(tenant, status.spend_micros, now)
    _check_limit_mirror(tenant, limit)
    return status


def spend_counter_key(tenant_id, now: datetime) -> str:
    return names().spend_counter(tenant_id, period_id(settings.BILLING_PERIOD, now))


def _raise_counter(tenant: Tenant, micros: int, now: datetime) -> bool:
    """Raise the gateway's spend counter to ``micros`` if it is lower; True if it was raised."""
    if micros <= 0:
        return False
    try:
        client = get_redis()
        raised = client.register_script(RAISE_COUNTER)(
            keys=[spend_counter_key(tenant.pk, now)], args=[micros, COUNTER_TTL_SECONDS]
        )
    except Exception:  # noqa: BLE001 - Redis down: the next check (every minute) repairs it
        log.exception("could not reconcile the spend counter of %s", tenant.slug)
        return False
    if raised:
        log.info("spend counter of %s raised to %s micro-units from PostgreSQL", tenant.slug, micros)
    return bool(raised)


def _check_limit_mirror(tenant: Tenant, limit: Decimal | None) -> None:
    """Republish the tenant if its mirrored limit is not ``limit`` (just changed, or a write was lost)."""
    from tenants import mirror

    wanted = "" if limit is None else str(to_micros(limit))
    try:
        mirrored = get_redis().hget(names().tenant(tenant.pk), "spend_limit_micros")
    except Exception:  # noqa: BLE001 - Redis down: the next check repairs it
        log.exception("could not read the mirrored spend limit of %s", tenant.slug)
        return
    if mirrored != wanted:
        mirror.publish_tenant(tenant)


def republish_prices(*, now: datetime | None = None) -> list[str]:
    """Republish every mirrored model or adapter whose mirrored price is not the one in effect
    ``now`` (a price scheduled for later took effect, or a write was missed); returns their names."""
    from models_registry import mirror
    from models_registry.models import Model

    entries: list[tuple[str, Any, Callable[[Any], bool]]] = [
        (model.name, model, mirror.publish_model) for model in Model.objects.order_by("name")
    ]
    entries += [(a.served_name, a, mirror.publish_adapter) for a in mirror.published_adapters()]
    if not entries:
        return []
    pipe = get_redis().pipeline(transaction=False)
    for name, _, _ in entries:
        pipe.hmget(names().model(name), ["served_name", *mirror.PRICE_FIELDS])
    changed = []
    for (name, priced, publish), (served, *prices) in zip(entries, pipe.execute(), strict=True):
        if served is None:
            continue  # not mirrored (yet): the registry's resync publishes it whole
        wanted = mirror.price_fields(priced, now)
        if prices != [wanted.get(field) for field in mirror.PRICE_FIELDS]:
            publish(priced)
            changed.append(name)
    if changed:
        log.info("prices republished for %s", ", ".join(changed))
    return changed


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


def _send_alert(tenant: Tenant, status: SpendStatus, threshold: int, limit_amount: Decimal) -> None:
    currency = settings.BILLING_CURRENCY
    spent = money.format_money(status.spend, currency)
    limit = money.format_money(limit_amount, currency)
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
    try:
        republish_prices(now=now)
    except Exception:  # noqa: BLE001 - the spend checks below must still run
        log.exception("could not republish model prices")
    blocked = 0
    for tenant in Tenant.objects.select_related("plan").order_by("slug"):
        try:
            blocked += check_tenant(tenant=tenant, now=now).blocked
        except Exception:  # noqa: BLE001 - one tenant's failure must not stop the others
            log.exception("spend check failed for %s", tenant.slug)
    return blocked
