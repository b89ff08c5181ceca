"""Console pages: overview (with the tokens chart), models, usage (+ CSV) and settings."""

from __future__ import annotations

import csv
from datetime import UTC, date, timedelta

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.db import transaction
from django.db.models import Count, Q
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from audit import trail
from billing import reports, spend
from billing.models import BillingAccount, UsageRecord
from billing.periods import period_containing
from console import usage_breakdown
from console.access import NoTenant, forbidden, tenant_required
from console.forms import BillingSettingsForm, OrganizationForm, ResidencyForm, UsageRangeForm
from contract import tiers
from models_registry import catalog
from models_registry.constants import Task
from models_registry.models import Model
from provisioning.constants import WorkerState
from tenants import residency
from tenants.constants import PERM_MANAGE_BILLING, PERM_MANAGE_SETTINGS, PERM_USE_KEYS, PERM_VIEW_BILLING
from tenants.models import ApiKey, Tenant
from tenants.permissions import allows

CHART_DAYS = 30


def _chart(rows, days: list[date]) -> dict:
    return {
        "labels": [d.isoformat() for d in days],
        "series": reports.series_by_model(rows, days, "total_tokens"),
    }


def models_for(tenant):
    """Models ``tenant`` may use, with the price in effect and ready replicas."""
    return (
        Model.objects.visible_to(tenant)
        .with_current_price()
        .with_manifest_digest()
        .annotate(
            ready_replicas=Count(
                "deployments__workers", filter=Q(deployments__workers__state=WorkerState.READY)
            ),
            deployment_count=Count("deployments", distinct=True),
        )
        .order_by("name")
    )


def _bar(percent: float) -> int:
    """A progress bar's value: whole percent, full at 100."""
    return min(100, round(percent))


@tenant_required()
def overview(request, tenant: Tenant):
    now = timezone.now()
    period = period_containing(now)
    today = now.astimezone(UTC).date()
    days = [today - timedelta(days=n) for n in range(CHART_DAYS - 1, -1, -1)]
    chart_rows = reports.usage_by_day(tenant, *reports.day_bounds(days[0], today))
    period_rows = reports.usage_by_day(tenant, period.start, period.end)
    totals = reports.totals(period_rows)
    can_bill = allows(request.user, tenant, PERM_VIEW_BILLING)
    limit = spend.limit_for(tenant) if can_bill else None
    spent = reports.spend(tenant, period.start, period.end) if can_bill else None
    budget = tenant.plan.monthly_token_budget
    chat_model = models_for(tenant).filter(task=Task.CHAT).values_list("name", flat=True).first()
    context = {
        "period": period,
        "totals": totals,
        "token_budget": budget,
        "token_percent": _bar(spend.percent_of(totals["total_tokens"], budget)) if budget else None,
        "can_bill": can_bill,
        "spend": spent,
        "spend_limit": limit,
        "spend_percent": _bar(spend.percent_of(spent, limit)) if can_bill and limit is not None else None,
        "chart": _chart(chart_rows, days),
        "chart_days": CHART_DAYS,
        "has_usage": any(r.total_tokens for r in chart_rows),
        "key_count": ApiKey.objects.for_tenant(tenant).usable().count(),
        "example_model": chat_model or "MODEL",
        "can_use_keys": allows(request.user, tenant, PERM_USE_KEYS),
    }
    return render(request, "console/overview.html", context)


@tenant_required()
def models_page(request, tenant: Tenant):
    models = list(models_for(tenant))
    for model in models:
        # Flex, priority and batch prices where they differ from the default (catalog.tier_prices).
        model.tier_prices = catalog.tier_prices(catalog.annotated_price(model), only_differing=True)
    return render(request, "console/models.html", {"models": models})


def _range(request) -> tuple[UsageRangeForm, date, date]:
    form = UsageRangeForm(request.GET or None)
    today = timezone.now().astimezone(UTC).date()
    start, end = today - timedelta(days=29), today
    if request.GET and form.is_valid():
        start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    elif not request.GET:
        form = UsageRangeForm(initial={"start": start, "end": end})
    return form, start, end


@tenant_required()
def usage(request, tenant: Tenant):
    form, start, end = _range(request)
    valid = not form.is_bound or form.is_valid()
    rows = reports.usage_by_day(tenant, *reports.day_bounds(start, end), split_tiers=True) if valid else []
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    context = {
        "form": form,
        "start": start,
        "end": end,
        "rows": rows,
        "totals": reports.totals(rows),
        "per_model": reports.by_model(rows),
        "chart": _chart(rows, days),
        "can_bill": allows(request.user, tenant, PERM_VIEW_BILLING),
        "valid": valid,
        "breakdown": usage_breakdown.context(request, tenant, start, end) if valid else None,
    }
    template = "console/_usage_results.html" if request.headers.get("HX-Request") else "console/usage.html"
    return render(request, template, context, status=200 if valid else 400)


class _Echo:
    def write(self, value):
        return value


# Rows per query and per chunk sent. The export is read by keyset pagination, one batch per query.
# Under ASGI it is handed to Django as an async iterator that fetches each batch in the request's
# sync thread: given a sync iterator, Django's ASGI handler would first read it whole into a list,
# holding the entire CSV in the web process.
CSV_BATCH_ROWS = 2000


@tenant_required(if_no_tenant=NoTenant.NOT_FOUND)
def usage_csv(request, tenant: Tenant):
    form = UsageRangeForm(request.GET)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(errs)}" for field, errs in form.errors.items())
        return HttpResponse(f"Invalid range. {errors}", status=400, content_type="text/plain; charset=utf-8")
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    granularity = request.GET.get("granularity", "request")
    if granularity not in ("request", "day"):
        return HttpResponse("granularity must be request or day.", status=400, content_type="text/plain")
    can_bill = allows(request.user, tenant, PERM_VIEW_BILLING)
    lo, hi = reports.day_bounds(start, end)
    batches = (
        _csv_days(tenant, lo, hi, can_bill) if granularity == "day" else _csv_requests(tenant.pk, lo, hi)
    )
    chunks = _csv_text(batches)
    response = StreamingHttpResponse(
        _in_sync_thread(chunks) if isinstance(request, ASGIRequest) else chunks,
        content_type="text/csv; charset=utf-8",
    )
    name = (
        f"berth-usage-{tenant.slug}-{start:%Y%m%d}-{end:%Y%m%d}{'-daily' if granularity == 'day' else ''}.csv"
    )
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "private, no-store"
    return response


_END = object()


async def _in_sync_thread(iterator):
    """Advance a sync iterator (one that queries the database) one item per await."""
    step = sync_to_async(next)
    while (item := await step(iterator, _END)) is not _END:
        yield item


def _csv_text(batches):
    """One chunk of CSV text per batch of rows."""
    writer = csv.writer(_Echo())
    for rows in batches:
        yield "".join(writer.writerow(row) for row in rows)


_REQUEST_COLUMNS = (
    "occurred_at", "request_id", "model", "endpoint", "api_key_id", "prompt_tokens", "cached_tokens",
    "completion_tokens", "status", "http_status", "latency_ms", "ttft_ms", "service_tier", "queue_ms",
    "batch_id", "pk",
)  # fmt: skip


def _csv_requests(tenant_id, lo, hi):
    yield [[
        "occurred_at", "request_id", "model", "endpoint", "api_key_id", "prompt_tokens", "cached_tokens",
        "completion_tokens", "total_tokens", "status", "http_status", "latency_ms", "ttft_ms",
        "service_tier", "queue_ms", "batch_id",
    ]]  # fmt: skip
    records = UsageRecord.objects.filter(tenant_id=tenant_id, occurred_at__gte=lo, occurred_at__lt=hi)
    page = records
    while True:
        batch = list(page.order_by("occurred_at", "pk").values_list(*_REQUEST_COLUMNS)[:CSV_BATCH_ROWS])
        if not batch:
            return
        yield [
            [at.astimezone(UTC).isoformat(), rid, model, endpoint, key or "", prompt, cached, completion,
             prompt + completion, status, http, latency, "" if ttft is None else ttft, tier or "default",
             queue, batch]
            for at, rid, model, endpoint, key, prompt, cached, completion, status, http, latency, ttft, tier,
            queue, batch, _ in batch
        ]  # fmt: skip
        if len(batch) < CSV_BATCH_ROWS:
            return
        at, pk = batch[-1][0], batch[-1][-1]
        page = records.filter(Q(occurred_at__gt=at) | Q(occurred_at=at, pk__gt=pk))


def _csv_days(tenant, lo, hi, can_bill: bool):
    # One row per day and model over at most MAX_RANGE_DAYS: small, so one query and one batch.
    header = ["date", "model", "service_tier", "requests", "errors", "prompt_tokens", "cached_tokens",
              "cache_hit_rate", "completion_tokens", "total_tokens"]  # fmt: skip
    rows = [[*header, "estimated_cost"] if can_bill else header]
    for row in reports.usage_by_day(tenant, lo, hi, split_tiers=True):
        rate = "" if row.cache_hit_rate is None else f"{row.cache_hit_rate:.4f}"
        line = [row.day.isoformat(), row.model, row.service_tier, row.requests, row.errors, row.prompt_tokens,
                row.cached_tokens, rate, row.completion_tokens, row.total_tokens]  # fmt: skip
        rows.append([*line, f"{row.cost:.6f}"] if can_bill else line)
    yield rows


@tenant_required()
def settings_page(request, tenant: Tenant):
    can_settings = allows(request.user, tenant, PERM_MANAGE_SETTINGS)
    can_billing = allows(request.user, tenant, PERM_MANAGE_BILLING)
    account = spend.account_for(tenant) if can_billing else BillingAccount(tenant=tenant)
    which = request.POST.get("form") if request.method == "POST" else None
    org_form = OrganizationForm(
        request.POST if which == "organization" else None, instance=tenant, prefix="org"
    )
    billing_form = BillingSettingsForm(
        request.POST if which == "billing" else None, instance=account, prefix="billing", plan=tenant.plan
    )
    can_residency = residency.may_change(request.membership)
    residency_form = ResidencyForm(
        request.POST if which == "residency" else None,
        prefix="residency",
        labels=residency.available_labels(),
        current=tenant.data_residency,
    )
    status = 200
    if which == "residency":
        if not can_residency:
            return forbidden(request, "Only owners can change the data-residency requirement.")
        if residency_form.is_valid():
            try:
                residency.set_requirement(tenant=tenant, label=residency_form.cleaned_data["data_residency"])
            except ValidationError as exc:
                residency_form.add_error("data_residency", exc)
            else:
                messages.success(request, "Data residency saved.")
                return redirect("console:settings")
        status = 400
    elif which == "organization":
        if not can_settings:
            return forbidden(request, "Only owners and admins can rename the organization.")
        if org_form.is_valid():
            with transaction.atomic():
                before, after = trail.form_changes(org_form)
                org_form.save()
                if after:
                    trail.record(
                        action="tenant.settings_changed",
                        tenant=tenant,
                        target=tenant,
                        summary=f"organization settings changed: {', '.join(after)}",
                        before=before,
                        after=after,
                    )
            messages.success(request, "Organization name saved.")
            return redirect("console:settings")
        status = 400
    elif which == "billing":
        if not can_billing:
            return forbidden(request, "Only owners and billing members can change spend limits and alerts.")
        if billing_form.is_valid():
            with transaction.atomic():
                before, after = trail.form_changes(billing_form)
                billing_form.save()
                if after:
                    trail.record(
                        action="billing.spend_limit_changed"
                        if "spend_limit" in after
                        else "billing.settings_changed",
                        tenant=tenant,
                        target=billing_form.instance,
                        summary=f"billing settings changed: {', '.join(after)}",
                        before=before,
                        after=after,
                    )
                transaction.on_commit(lambda: spend.check_tenant(tenant=tenant))
            messages.success(request, "Billing settings saved. The new limit applies within seconds.")
            return redirect("console:settings")
        status = 400
    context = {
        "org_form": org_form,
        "billing_form": billing_form,
        "can_settings": can_settings,
        "can_billing": can_billing,
        "residency_form": residency_form,
        "can_residency": can_residency,
        "plan": tenant.plan,
        "service_tiers": tiers.allowed_tiers(tenant.plan.priority_band),
        "plan_tier": tiers.resolve(None, tenant.plan.priority_band),
        "spend": reports.period_spend(tenant, timezone.now()) if can_billing else None,
    }
    return render(request, "console/settings.html", context, status=status)
