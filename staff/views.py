"""Staff dashboard: the fleet, deployments, tenants, revenue, economics and gateway traffic.

Every view needs ``is_staff``: anonymous users are sent to log in, signed-in non-staff get 403.
Actions are POSTs (CSRF) that work both from htmx (the changed row is swapped in) and without
JavaScript (redirect back with a message). They call ``provisioning.operations`` with the signed-in
user, who is recorded on the event.
"""

from __future__ import annotations

import csv
import functools

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from billing import payments, reports
from billing.models import BillingAccount
from billing.money import format_money
from billing.periods import period_containing
from billing.pricing import CurrencyMismatch
from economics import api as economics_api
from economics import report as economics_report
from models_registry.models import Deployment
from provisioning import operations
from provisioning.models import Worker
from staff import queries, queues
from tenants.constants import TenantStatus
from tenants.models import Tenant

TENANTS_PER_PAGE = 50


def staff_required(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (request.user.is_active and request.user.is_staff):
            raise PermissionDenied("Staff only.")
        return view(request, *args, **kwargs)

    return wrapper


def _htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


VIA = "staff dashboard"


# --------------------------------------------------------------------------- fleet


def _fleet_context(now):
    return {
        "cards": queries.pool(),
        "workers": queries.workers(now),
        "now": now,
    }


@staff_required
@require_GET
def fleet(request):
    now = timezone.now()
    context = _fleet_context(now) | {"deployments": queries.deployments(), "section": "fleet"}
    return render(request, "staff/fleet.html", context)


@staff_required
@require_GET
def fleet_pool(request):
    return render(request, "staff/partials/pool.html", {"cards": queries.pool()})


@staff_required
@require_GET
def fleet_workers(request):
    return render(request, "staff/partials/workers.html", {"workers": queries.workers(timezone.now())})


@staff_required
@require_GET
def fleet_deployments(request):
    return render(request, "staff/partials/deployments.html", {"deployments": queries.deployments()})


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(
        min_value=0,
        error_messages={
            "required": "Enter a number of replicas.",
            "invalid": "Enter a whole number of replicas.",
            "min_value": "Replicas cannot be negative.",
        },
    )


def _deployment_done(request, deployment_pk, *, notice: str = "", error: str = "", value=None):
    """htmx: the deployment's row, re-rendered with the outcome; otherwise back to the fleet."""
    if _htmx(request):
        row = queries.deployment(deployment_pk)
        context = {"d": row, "notice": notice, "error": error, "value": value}
        return render(request, "staff/partials/deployment_row.html", context)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, notice)
    return redirect(reverse("staff:fleet") + "#deployments")


@staff_required
@require_POST
def scale(request, deployment_id):
    deployment = get_object_or_404(Deployment.objects.select_related("model"), pk=deployment_id)
    form = ScaleForm(request.POST)
    if not form.is_valid():
        error = f"{deployment.model.name}: {' '.join(form.errors['replicas'])}"
        return _deployment_done(request, deployment.pk, error=error, value=request.POST.get("replicas", ""))
    wanted = form.cleaned_data["replicas"]
    before = deployment.desired_replicas
    if wanted == 0:
        operations.scale_to_zero(deployment=deployment, actor=request.user, via=VIA)
        notice = f"{deployment.model.name}: scaled to zero (desired replicas {before} → 0)"
        return _deployment_done(request, deployment.pk, notice=notice + ".")
    operations.scale(deployment=deployment, replicas=wanted, actor=request.user, via=VIA)
    notice = f"{deployment.model.name}: desired replicas {before} → {deployment.desired_replicas}"
    if deployment.desired_replicas != wanted:
        notice += f" ({wanted} is above the maximum of {deployment.max_replicas})"
    return _deployment_done(request, deployment.pk, notice=notice + ".")


@staff_required
@require_POST
def drain_deployment(request, deployment_id):
    deployment = get_object_or_404(Deployment.objects.select_related("model"), pk=deployment_id)
    count = operations.drain_ready_workers(deployment=deployment, actor=request.user, via=VIA)
    notice = f"{deployment.model.name}: {count} ready worker(s) draining."
    if count and deployment.desired_replicas:
        notice += " Replacements start while desired replicas stay above zero."
    return _deployment_done(request, deployment.pk, notice=notice)


@staff_required
@require_POST
def restart(request, deployment_id):
    deployment = get_object_or_404(Deployment.objects.select_related("model"), pk=deployment_id)
    count = operations.restart(deployment=deployment, actor=request.user, via=VIA)
    return _deployment_done(
        request, deployment.pk, notice=f"{deployment.model.name}: restarting {count} worker(s)."
    )


@staff_required
@require_POST
def drain_worker(request, worker_id):
    worker = get_object_or_404(Worker.objects.select_related("deployment__model", "node"), pk=worker_id)
    short = str(worker.pk)[:8]
    if operations.drain(worker=worker, actor=request.user, via=VIA):
        notice, error = f"Worker {short} is draining.", ""
    else:
        notice, error = "", f"Worker {short} is {worker.state}: nothing to drain."
    if _htmx(request):
        worker.refresh_from_db()
        context = {"w": worker, "now": timezone.now(), "notice": notice, "error": error}
        return render(request, "staff/partials/worker_row.html", context)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, notice)
    return redirect(reverse("staff:fleet") + "#workers")


# --------------------------------------------------------------------------- tenants


def _tenant_rows(tenants, now):
    tokens = queries.period_tokens([t.pk for t in tenants], now)
    currency = settings.BILLING_CURRENCY
    billing = BillingAccount.objects.in_bulk([t.pk for t in tenants])
    for tenant in tenants:
        account = billing.get(tenant.pk)
        # Shown in the row: a period that failed to close into an invoice (retried every run) and
        # a suspension made by dunning (lifted by payment, or by Resume here).
        tenant.close_failure = account if account and account.close_failed_at else None
        tenant.suspended_for_nonpayment = bool(account and account.suspended_for_nonpayment)
        tenant.period_tokens = tokens.get(tenant.pk, 0)
        # One query per tenant (priced lines); fine for a page of 50.
        tenant.period_spend = format_money(reports.period_spend(tenant, now), currency)
    return tenants


@staff_required
@require_GET
def tenants(request):
    now = timezone.now()
    queryset = Tenant.objects.select_related("plan").annotate(members=Count("memberships")).order_by("name")
    page = Paginator(queryset, TENANTS_PER_PAGE).get_page(request.GET.get("page"))
    _tenant_rows(page.object_list, now)
    context = {"page": page, "period": period_containing(now), "section": "tenants"}
    return render(request, "staff/tenants.html", context)


@staff_required
@require_POST
def tenant_status(request, tenant_id):
    tenant = get_object_or_404(Tenant.objects.select_related("plan"), pk=tenant_id)
    try:
        status = TenantStatus(request.POST.get("status", ""))
    except ValueError:
        status = None
    if status is None:
        error = "Unknown status."
        if _htmx(request):
            return render(request, "staff/partials/tenant_row.html", _one_tenant(tenant) | {"error": error})
        messages.error(request, error)
        return redirect("staff:tenants")
    if not request.POST.get("confirmed"):
        # Without JavaScript there was no confirm() dialog: ask on a page of its own.
        return render(request, "staff/tenant_confirm.html", {"tenant": tenant, "status": status})
    payments.set_tenant_status(tenant=tenant, status=status, user=request.user)
    verb = "suspended" if status == TenantStatus.SUSPENDED else "resumed"
    notice = f"{tenant.name} {verb}."
    if _htmx(request):
        return render(request, "staff/partials/tenant_row.html", _one_tenant(tenant) | {"notice": notice})
    messages.success(request, notice)
    return redirect("staff:tenants")


def _one_tenant(tenant):
    tenant = Tenant.objects.select_related("plan").annotate(members=Count("memberships")).get(pk=tenant.pk)
    _tenant_rows([tenant], timezone.now())
    return {"t": tenant}


# --------------------------------------------------------------------------- revenue & traffic


@staff_required
@require_GET
def revenue(request):
    by_currency = queries.revenue_by_month(timezone.now())
    charts = []
    for currency, months in by_currency.items():
        charts.append(
            {
                "currency": currency,
                "data_id": f"revenue-data-{currency}",
                "rows": [
                    {
                        "month": m.month,
                        "paid": format_money(m.paid, currency),
                        "open": format_money(m.open, currency),
                        "total": format_money(m.total, currency),
                    }
                    for m in months
                ],
                "data": {
                    "labels": [f"{m.month:%b %Y}" for m in months],
                    "paid": [str(m.paid) for m in months],
                    "open": [str(m.open) for m in months],
                    "currency": currency,
                },
                "paid_total": format_money(sum((m.paid for m in months), 0), currency),
                "open_total": format_money(sum((m.open for m in months), 0), currency),
            }
        )
    return render(request, "staff/revenue.html", {"charts": charts, "section": "revenue"})


def _traffic_context():
    rows = queries.traffic(timezone.now())
    return {
        "rows": rows,
        "series": queries.traffic_series(rows),
        "has_traffic": any(row.requests for row in rows),
        "totals": {
            "requests": sum(r.requests for r in rows),
            "tokens": sum(r.tokens for r in rows),
            "errors": sum(r.errors for r in rows),
        },
    }


@staff_required
@require_GET
def traffic(request):
    return render(request, "staff/traffic.html", _traffic_context() | {"section": "traffic"})


@staff_required
@require_GET
def traffic_data(request):
    return render(request, "staff/partials/traffic_data.html", _traffic_context())


# --------------------------------------------------------------------------- admission queues


def _queues_context():
    snapshot = queues.snapshot()
    names = queues.tenant_names(snapshot)
    tenant_rows = [
        {"model": q.model, "tier": tier, "tenant": names.get(tenant, tenant), "waiting": waiting}
        for q in snapshot
        for (tier, tenant), waiting in sorted(q.tenants.items(), key=lambda item: -item[1].oldest_ms)
    ]
    return {
        "queues": snapshot,
        "tiers": queues.TIERS,
        "tenant_rows": tenant_rows,
        "queues_chart": queues.chart(snapshot),
        "has_waiting": any(q.depth for q in snapshot),
    }


@staff_required
@require_GET
def queues_page(request):
    return render(request, "staff/queues.html", _queues_context() | {"section": "queues"})


@staff_required
@require_GET
def queues_data(request):
    return render(request, "staff/partials/queues_data.html", _queues_context())


# --------------------------------------------------------------------------- economics


def _economics_csv(data: dict) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="berth-economics-{data["month"]}.csv"'
    writer = csv.writer(response)
    writer.writerow([*economics_report.CSV_COLUMNS, "currency"])
    for row in [*data["models"], data["total"]]:
        writer.writerow(
            [*("" if row[c] is None else row[c] for c in economics_report.CSV_COLUMNS), data["currency"]]
        )
    return response


@staff_required
@require_GET
def economics(request):
    query = economics_api.MonthQuerySerializer(data=request.GET)
    month = economics_api.current_month()
    error = ""
    if request.GET.get("month"):
        if query.is_valid():
            month = query.validated_data["month"]
        else:
            error = "Choose a month as YYYY-MM."
    try:
        data = economics_report.as_dict(economics_report.build(month))
    except CurrencyMismatch as exc:
        data, error = None, str(exc)
    if data is not None and request.GET.get("format") == "csv":
        return _economics_csv(data)
    chart = None
    if data is not None and data["models"]:
        models = data["models"]
        chart = {
            "labels": [m["model"] for m in models],
            "revenue": [m["revenue"] for m in models],
            "cost": [m["cost"] for m in models],
            "starting": [m["starting_gpu_hours"] for m in models],
            "busy": [m["busy_gpu_hours"] for m in models],
            "idle": [m["idle_gpu_hours"] for m in models],
            "draining": [m["draining_gpu_hours"] for m in models],
            "currency": data["currency"],
        }
    context = {"section": "economics", "month": month, "data": data, "chart": chart, "error": error}
    return render(request, "staff/economics.html", context, status=400 if error and data is None else 200)
