"""Admin for billing: invoices (read-only lines; mark paid/void through billing/payments.py), accounts
(with any failed period close), events."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction

from billing import payments, spend
from billing.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    SpendAlert,
    StripeEvent,
    UsageRecord,
)

LINE_FIELDS = (
    "model",
    "kind",
    "service_tier",
    "tokens",
    "unit_price_per_million",
    "amount",
    "requests",
    "late_requests",
)


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = LINE_FIELDS
    readonly_fields = LINE_FIELDS

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ["number", "tenant", "period_start", "status", "total", "currency", "stripe_invoice_id"]
    list_filter = ["status", "currency", "period_start"]
    search_fields = ["number", "tenant__name", "tenant__slug", "stripe_invoice_id"]
    readonly_fields = [
        "number",
        "tenant",
        "period_start",
        "period_end",
        "currency",
        "subtotal",
        "total",
        "created_at",
        "finalized_at",
        "due_at",
        "paid_at",
        "stripe_invoice_id",
        "stripe_hosted_url",
        "stripe_synced_at",
        "status",
    ]
    inlines = [InvoiceLineInline]
    actions = ["mark_paid", "mark_void"]

    def has_add_permission(self, request):
        return False  # invoices come from closing periods (manage.py close_billing_period)

    def has_delete_permission(self, request, obj=None):
        return False  # void instead: usage stays claimed and the numbers stay unique

    @admin.action(description="Mark paid (payment received outside Stripe)")
    def mark_paid(self, request, queryset):
        self._apply(request, queryset, payments.mark_paid, "marked paid")

    @admin.action(description="Void (cancel) unpaid invoices")
    def mark_void(self, request, queryset):
        self._apply(request, queryset, payments.void, "voided")

    def _apply(self, request, queryset, action, verb: str) -> None:
        done, resumed = 0, []
        for invoice in queryset.select_related("tenant").order_by("number"):
            try:
                outcome = action(invoice=invoice, user=request.user)
            except payments.PaymentActionError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            done += 1
            if outcome.resumed:
                resumed.append(outcome.invoice.tenant.name)
        if done:
            self.message_user(request, f"{done} invoice(s) {verb}.", messages.SUCCESS)
        if resumed:
            self.message_user(
                request, f"Resumed (nothing left unpaid): {', '.join(resumed)}.", messages.SUCCESS
            )


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = [
        "tenant",
        "spend_limit",
        "billing_email",
        "stripe_customer_id",
        "payment_failed_at",
        "suspended_for_nonpayment",
        "close_failed_at",
    ]
    list_filter = [("close_failed_at", admin.EmptyFieldListFilter), "suspended_for_nonpayment"]
    search_fields = ["tenant__name", "tenant__slug", "billing_email", "stripe_customer_id"]
    readonly_fields = [
        "stripe_customer_id",
        "payment_failed_at",
        "payment_warning_sent_at",
        "suspended_for_nonpayment",
        "grace_restarted_at",
        "close_failed_at",
        "close_failed_period_start",
        "close_error",
        "updated_at",
    ]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # A new limit reaches the gateway's mirror and the spend block at once.
        tenant = obj.tenant
        transaction.on_commit(lambda: spend.check_tenant(tenant=tenant))


@admin.register(SpendAlert)
class SpendAlertAdmin(admin.ModelAdmin):
    list_display = ["tenant", "period_start", "threshold", "spend", "limit", "sent_at"]
    list_filter = ["threshold"]

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ["id", "type", "received_at", "processed_at"]
    list_filter = ["type"]
    search_fields = ["id"]

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = [
        "request_id",
        "tenant",
        "model",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "service_tier",
        "queue_ms",
        "status",
        "occurred_at",
    ]
    list_filter = ["status", "endpoint", "service_tier"]
    search_fields = ["request_id", "model", "batch_id"]
    date_hierarchy = "occurred_at"

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
