"""Console pages for invoices: list, detail and PDF (members with the view_billing permission)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from billing import pdf, reports, spend, stripe_sync
from billing.models import Invoice
from billing.periods import period_containing
from console.pages import forbidden
from tenants.constants import PERM_VIEW_BILLING


def _billing_denied(request):
    """The 403 page for roles without billing, else None."""
    if request.user.has_perm(f"tenants.{PERM_VIEW_BILLING}", request.tenant):
        return None
    return forbidden(
        request,
        f"Your role in {request.tenant.name} does not include billing. Ask an owner to give you the "
        "Billing or Admin role.",
    )


def _tenant(request):
    if not request.tenant:
        raise Http404("You are not a member of any organization.")
    return request.tenant


@login_required
def invoices(request):
    tenant = _tenant(request)
    if denied := _billing_denied(request):
        return denied
    now = timezone.now()
    period = period_containing(now)
    context = {
        "invoices": Invoice.objects.for_tenant(tenant).order_by("-period_start"),
        "period": period,
        "period_spend": reports.spend(tenant, period.start, period.end),
        "limit": spend.limit_for(tenant),
        "online_payment": stripe_sync.configured(),
    }
    return render(request, "console/invoices.html", context)


def _invoice(request, invoice_id):
    # Another tenant's invoice is simply not found (no existence leak).
    return get_object_or_404(
        Invoice.objects.for_tenant(_tenant(request)).select_related("tenant"), pk=invoice_id
    )


@login_required
def invoice_detail(request, invoice_id):
    _tenant(request)
    if denied := _billing_denied(request):
        return denied
    invoice = _invoice(request, invoice_id)
    context = {
        "invoice": invoice,
        "lines": invoice.lines.select_related("price"),
        "online_payment": stripe_sync.configured(),
    }
    return render(request, "console/invoice.html", context)


@login_required
def invoice_pdf(request, invoice_id):
    _tenant(request)
    if denied := _billing_denied(request):
        return denied
    invoice = _invoice(request, invoice_id)
    response = HttpResponse(pdf.render(invoice), content_type="application/pdf")
    disposition = "inline" if request.GET.get("inline") else "attachment"
    response["Content-Disposition"] = f'{disposition}; filename="{pdf.filename(invoice)}"'
    response["Cache-Control"] = "private, no-store"
    return response
