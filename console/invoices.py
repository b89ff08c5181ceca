"""Console pages for invoices: list, detail and PDF (members with the view_billing permission)."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from billing import pdf, reports, spend, stripe_sync
from billing.models import Invoice
from billing.periods import period_containing
from console.access import NoTenant, tenant_required
from tenants.constants import PERM_VIEW_BILLING

billing_required = tenant_required(
    perm=PERM_VIEW_BILLING,
    denied="Your role in {tenant.name} does not include billing. Ask an owner to give you the "
    "Billing or Admin role.",
    if_no_tenant=NoTenant.NOT_FOUND,
)


@billing_required
def invoices(request, tenant):
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


def _invoice(tenant, invoice_id):
    # Another tenant's invoice is simply not found (no existence leak).
    return get_object_or_404(Invoice.objects.for_tenant(tenant).select_related("tenant"), pk=invoice_id)


@billing_required
def invoice_detail(request, tenant, invoice_id):
    invoice = _invoice(tenant, invoice_id)
    context = {
        "invoice": invoice,
        "lines": invoice.lines.select_related("price__adapter__base_model"),
        "online_payment": stripe_sync.configured(),
    }
    return render(request, "console/invoice.html", context)


@billing_required
def invoice_pdf(request, tenant, invoice_id):
    invoice = _invoice(tenant, invoice_id)
    response = HttpResponse(pdf.render(invoice), content_type="application/pdf")
    disposition = "inline" if request.GET.get("inline") else "attachment"
    response["Content-Disposition"] = f'{disposition}; filename="{pdf.filename(invoice)}"'
    response["Cache-Control"] = "private, no-store"
    return response
