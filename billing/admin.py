"""Admin for billing: invoices (read-only lines; mark paid/void when paid offline), accounts, events."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from billing.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    SpendAlert,
    StripeEvent,
    UsageRecord,
)


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ["model", "kind", "tokens", "unit_price_per_million", "amount", "requests", "late_requests"]
    readonly_fields = fields

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
        count = queryset.filter(status=InvoiceStatus.OPEN).update(
            status=InvoiceStatus.PAID, paid_at=timezone.now()
        )
        self.message_user(request, f"{count} open invoice(s) marked paid.", messages.SUCCESS)

    @admin.action(description="Void (cancel) open invoices")
    def mark_void(self, request, queryset):
        count = queryset.filter(status__in=[InvoiceStatus.DRAFT, InvoiceStatus.OPEN]).update(
            status=InvoiceStatus.VOID
        )
        self.message_user(request, f"{count} invoice(s) voided.", messages.SUCCESS)


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["tenant", "spend_limit", "billing_email", "stripe_customer_id", "payment_failed_at"]
    search_fields = ["tenant__name", "tenant__slug", "billing_email", "stripe_customer_id"]
    readonly_fields = ["stripe_customer_id", "payment_failed_at", "payment_warning_sent_at", "updated_at"]


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
        "completion_tokens",
        "status",
        "occurred_at",
    ]
    list_filter = ["status", "endpoint"]
    search_fields = ["request_id", "model"]
    date_hierarchy = "occurred_at"

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
