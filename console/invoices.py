"""Console pages for invoices: list, detail and PDF (members with the view_billing permission)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from billing import pdf, reports, spend, stripe_status
from billing.models import Invoice
from billing.periods import period_containing
from tenants.constants import PERM_VIEW_BILLING


def _billing_tenant(request):
    tenant = request.tenant
    if not tenant:
        raise Http404("You are not a member of any organization.")
    if not request.user.has_perm(f"tenants.{PERM_VIEW_BILLING}", tenant):
        return tenant, False
    return tenant, True


def _forbidden(request):
    response = render(request, "console/billing_forbidden.html", status=403)
    return response


@login_required
def invoices(request):
    tenant, allowed = _billing_tenant(request)
    if not allowed:
        return _forbidden(request)
    now = timezone.now()
    period = period_containing(now)
    context = {
        "invoices": Invoice.objects.for_tenant(tenant).order_by("-period_start"),
        "period": period,
        "period_spend": reports.spend(tenant, period.start, period.end),
        "limit": spend.limit_for(tenant),
        "online_payment": stripe_status.online_payment(),
    }
    return render(request, "console/invoices.html", context)


def _invoice(request, invoice_id):
    tenant, allowed = _billing_tenant(request)
    if not allowed:
        return None
    # Another tenant's invoice is simply not found (no existence leak).
    return get_object_or_404(Invoice.objects.for_tenant(tenant).select_related("tenant"), pk=invoice_id)


@login_required
def invoice_detail(request, invoice_id):
    invoice = _invoice(request, invoice_id)
    if invoice is None:
        return _forbidden(request)
    context = {
        "invoice": invoice,
        "lines": invoice.lines.select_related("price"),
        "online_payment": stripe_status.online_payment(),
    }
    return render(request, "console/invoice.html", context)


@login_required
def invoice_pdf(request, invoice_id):
    invoice = _invoice(request, invoice_id)
    if invoice is None:
        return _forbidden(request)
    response = HttpResponse(pdf.render(invoice), content_type="application/pdf")
    disposition = "inline" if request.GET.get("inline") else "attachment"
    response["Content-Disposition"] = f'{disposition}; filename="{pdf.filename(invoice)}"'
    response["Cache-Control"] = "private, no-store"
    return response
