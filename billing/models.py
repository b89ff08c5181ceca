"""Usage records: one per gateway request, append-only.

Records arrive from the gateway's Redis stream through ``billing/usage.py``; invoices are built
from them only. Token counts are integers; prices and amounts live with invoicing, as Decimals.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


class UsageStatus(models.TextChoices):
    OK = "ok", "Completed"
    CLIENT_DISCONNECTED = (
        "client_disconnected",
        "Client disconnected (billed for what the engine produced until then)",
    )
    UPSTREAM_ERROR = "upstream_error", "Engine error"
    UPSTREAM_TIMEOUT = "upstream_timeout", "Engine did not answer in time (billed for the prompt)"
    GATEWAY_STOPPED = (
        "gateway_stopped",
        "Cut by a stopping gateway (billed for what the engine produced until then)",
    )
    GATEWAY_LOST = "gateway_lost", "Gateway died mid-stream (billed from its last checkpoint)"
    ERROR = "error", "Gateway error"


# The one definition of an error request, for every page and API that counts errors: the request
# got no complete answer, through a fault of Berth or its engine, or the client was sent a 5xx. A
# client that hung up is not an error (it was billed for what it got).
ANSWERED_STATUSES: tuple[str, ...] = (UsageStatus.OK, UsageStatus.CLIENT_DISCONNECTED)
SERVER_ERROR = 500  # an HTTP status at or above this is an error whatever the usage status says
ERRORS = ~Q(status__in=ANSWERED_STATUSES) | Q(http_status__gte=SERVER_ERROR)


class UsageSource(models.TextChoices):
    """Where a record's token counts come from, most exact first."""

    ENGINE = "engine", "Reported by the engine"
    TOKENIZER = "tokenizer", "Counted with the engine's tokenizer"
    CHUNKS = "chunks", "Completion counted by streamed chunks"
    ESTIMATE = "estimate", "Estimated by the gateway (about 4 characters per token)"
    CHECKPOINT = "checkpoint", "Last checkpoint of a stream whose gateway died"


class UsageEndpoint(models.TextChoices):
    """The API surface a record metered (the gateway's endpoint label; ``gateway.dialects``)."""

    CHAT = "chat", "Chat completions"
    COMPLETIONS = "completions", "Completions"
    EMBEDDINGS = "embeddings", "Embeddings"
    RESPONSES = "responses", "Responses"
    MESSAGES = "messages", "Messages (Anthropic)"
    RERANK = "rerank", "Rerank"
    SCORE = "score", "Score"


class ServiceTier(models.TextChoices):
    """The tier a request was served and is billed in (``contract.tiers``)."""

    DEFAULT = "default", "Default"
    FLEX = "flex", "Flex"
    PRIORITY = "priority", "Priority"
    BATCH = "batch", "Batch"


class UsageRecord(models.Model):
    """One metered request. ``request_id`` is unique, so re-delivered events are ignored."""

    request_id = models.CharField(max_length=64, unique=True)
    # No database constraint: usage must land even if the tenant row is being deleted meanwhile.
    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.DO_NOTHING, db_constraint=False, related_name="usage_records"
    )
    api_key_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=32, choices=UsageEndpoint.choices)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # Of prompt_tokens, those the engine served from its prefix cache (priced as cached input).
    cached_tokens = models.PositiveIntegerField(default=0, db_default=0)
    status = models.CharField(max_length=24, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField()
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    worker_id = models.CharField(max_length=64, blank=True, default="")
    usage_source = models.CharField(
        max_length=16, choices=UsageSource.choices, default=UsageSource.ENGINE, db_default=UsageSource.ENGINE
    )
    # The tier served (priced at the price row's percent for it), the wait in the gateway's
    # admission queue, and the /v1/batches batch of a batch line.
    service_tier = models.CharField(
        max_length=16,
        choices=ServiceTier.choices,
        default=ServiceTier.DEFAULT,
        db_default=ServiceTier.DEFAULT,
    )
    queue_ms = models.PositiveIntegerField(default=0, db_default=0)
    batch_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(auto_now_add=True)
    # Set when an invoice claims the record (billing/invoicing.py): a record is billed exactly once,
    # and one that arrives after its period closed is claimed by the next invoice.
    invoice = models.ForeignKey(
        "billing.Invoice", null=True, blank=True, on_delete=models.PROTECT, related_name="usage_records"
    )

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "occurred_at"], name="usage_tenant_time"),
            models.Index(
                fields=["tenant", "occurred_at"], condition=Q(invoice__isnull=True), name="usage_unbilled"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.prompt_tokens}+{self.completion_tokens}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


money: dict = {"max_digits": 14, "decimal_places": 3, "default": Decimal("0")}


class BillingAccount(models.Model):
    """A tenant's billing settings and payment state (created on first use)."""

    tenant = models.OneToOneField(
        "tenants.Tenant", primary_key=True, on_delete=models.CASCADE, related_name="billing_account"
    )
    billing_email = models.EmailField(
        blank=True, help_text="Invoices and alerts; owners and billing members get them too."
    )
    # None: the plan's monthly_spend_limit applies (None there too: no limit).
    spend_limit = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(Decimal("0"))]
    )
    alert_thresholds = models.JSONField(
        default=list, blank=True, help_text="Percent of the spend limit, e.g. [50, 80, 100]."
    )
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    payment_warning_sent_at = models.DateTimeField(null=True, blank=True)
    suspended_for_nonpayment = models.BooleanField(default=False)
    # Staff resumed the tenant while invoices were still failing: the grace period restarts here.
    grace_restarted_at = models.DateTimeField(null=True, blank=True)
    # The last failed attempt to close a period into an invoice (billing/invoicing.py): the next
    # run retries that period; a successful close clears these.
    close_failed_at = models.DateTimeField(null=True, blank=True)
    close_failed_period_start = models.DateTimeField(null=True, blank=True)
    close_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"billing for {self.tenant_id}"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open"
    PAID = "paid", "Paid"
    VOID = "void", "Void"
    UNCOLLECTIBLE = "uncollectible", "Uncollectible"


class InvoiceQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> InvoiceQuerySet:
        return self.filter(tenant=tenant)


class Invoice(models.Model):
    """One tenant's bill for one period ``[period_start, period_end)``; at most one per period."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    number = models.CharField(max_length=32, unique=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="invoices")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    currency = models.CharField(max_length=3)
    subtotal = models.DecimalField(**money)
    total = models.DecimalField(**money)
    created_at = models.DateTimeField(auto_now_add=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    stripe_hosted_url = models.URLField(max_length=500, blank=True)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    # When Stripe reported a failed payment for this invoice (webhook); dunning counts such invoices.
    payment_failed_at = models.DateTimeField(null=True, blank=True)

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period_start"], name="one_invoice_per_tenant_period"),
        ]

    def __str__(self) -> str:
        from billing.money import format_money

        return f"{self.number} ({format_money(self.total, self.currency)})"


class TokenKind(models.TextChoices):
    INPUT = "input", "Input tokens"
    OUTPUT = "output", "Output tokens"
    CACHED = "cached", "Cached input tokens"


class InvoiceLine(models.Model):
    """Tokens of one kind for one model at one price; ``amount`` rounded once (billing/money.py)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    model = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=TokenKind.choices)
    # The tier the line's requests were served in; its unit price is the price row's × the tier's
    # percent (billing/pricing.py), kept exact (up to ten decimals) so tokens × price = amount.
    service_tier = models.CharField(
        max_length=16,
        choices=ServiceTier.choices,
        default=ServiceTier.DEFAULT,
        db_default=ServiceTier.DEFAULT,
    )
    tokens = models.PositiveBigIntegerField()
    unit_price_per_million = models.DecimalField(max_digits=20, decimal_places=10)
    price = models.ForeignKey(
        "models_registry.Price", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    amount = models.DecimalField(**money)
    requests = models.PositiveIntegerField(default=0)
    # Requests from before this invoice's period (late usage events) counted in this line.
    late_requests = models.PositiveIntegerField(default=0)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["invoice", "position"]

    def __str__(self) -> str:
        tier = "" if self.service_tier == ServiceTier.DEFAULT else f" {self.service_tier}"
        return (
            f"{self.model} {self.kind}{tier} {self.tokens} @ {self.unit_price_per_million}/M = {self.amount}"
        )

    @property
    def adapter_base(self) -> str:
        """The base model's name when the line is a LoRA adapter's (its price is the adapter's)."""
        adapter = self.price.adapter if self.price is not None else None
        return adapter.base_model.name if adapter is not None else ""

    @property
    def description(self) -> str:
        base = self.adapter_base
        model = f"{self.model} (adapter on {base})" if base else self.model
        tier = "" if self.service_tier == ServiceTier.DEFAULT else f", {self.service_tier}"
        return f"{model} — {self.get_kind_display().lower()}{tier}"


class SpendAlert(models.Model):
    """A budget alert sent: at most one per tenant, period and threshold."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="spend_alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    spend = models.DecimalField(max_digits=14, decimal_places=6)
    limit = models.DecimalField(max_digits=12, decimal_places=2)
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "period_start", "threshold"], name="one_alert_per_threshold_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.threshold}% of {self.limit} ({self.period_start:%Y-%m-%d})"


class StripeEvent(models.Model):
    """A Stripe webhook event handled (by its id), so a replayed event changes nothing."""

    id = models.CharField(max_length=255, primary_key=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.id} {self.type}"
