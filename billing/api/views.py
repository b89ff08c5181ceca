"""Management API for usage and invoices, tenant-scoped; money needs the view_billing permission."""

from __future__ import annotations

from datetime import UTC, timedelta
from decimal import Decimal

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import generics, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import money, pdf, reports, usage_breakdown
from billing.models import Invoice, InvoiceLine, ServiceTier, UsageRecord
from tenants.api.permissions import TenantPermission, request_tenant
from tenants.constants import PERM_VIEW, PERM_VIEW_BILLING
from tenants.models import ApiKey
from tenants.permissions import allows


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First UTC day (default: 30 days ago).")
    end = serializers.DateField(required=False, help_text="Last UTC day, inclusive (default: today).")
    group_by = serializers.ChoiceField(
        choices=usage_breakdown.GROUPS,
        required=False,
        help_text="key: one row per API key; member: per member who created the keys (over the whole range).",
    )
    key = serializers.UUIDField(required=False, help_text="Only this API key's usage (its id).")

    def validate(self, attrs):
        # DRF reads "?start=" as an absent parameter; the schema says a date, so refuse it.
        blank = [name for name in ("start", "end") if self.initial_data.get(name) == ""]
        if blank:
            raise serializers.ValidationError(
                dict.fromkeys(blank, "Give a date (YYYY-MM-DD) or leave the parameter out.")
            )
        today = timezone.now().astimezone(UTC).date()
        end = attrs.get("end") or today
        start = attrs.get("start") or end - timedelta(days=29)
        if start > end:
            raise serializers.ValidationError({"end": "The end date must be on or after the start date."})
        if (end - start).days + 1 > reports.MAX_RANGE_DAYS:
            raise serializers.ValidationError(
                {"start": f"Ask for at most {reports.MAX_RANGE_DAYS} days at a time."}
            )
        return {**attrs, "start": start, "end": end}


class UsageRowSerializer(serializers.Serializer):
    date = serializers.DateField(source="day")
    model = serializers.CharField()
    service_tier = serializers.ChoiceField(
        choices=ServiceTier.choices,
        help_text="The tier the requests were served in (default, flex, priority; batch: /v1/batches "
        "lines), each billed at its percent of the model's price.",
    )
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()  # type: ignore[assignment]  # a field, not Serializer.errors
    prompt_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField(
        help_text="Of prompt_tokens, those served from the prefix cache."
    )
    cache_hit_rate = serializers.FloatField(allow_null=True, help_text="cached_tokens / prompt_tokens.")
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(
        max_digits=20, decimal_places=6, required=False, help_text="Estimate; the invoice is the bill."
    )


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()  # type: ignore[assignment]  # a field, not Serializer.errors
    prompt_tokens = serializers.IntegerField()
    # absent from the totals of usage grouped by key or member
    cached_tokens = serializers.IntegerField(required=False)
    cache_hit_rate = serializers.FloatField(allow_null=True, required=False)
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=6, required=False)


class UsageGroupSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The key's id (group_by=key) or the member's user id; empty: none.")
    name = serializers.CharField(source="label")
    member = serializers.CharField(required=False, help_text="group_by=key: the member who created the key.")
    revoked = serializers.BooleanField(required=False)
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()  # type: ignore[assignment]  # a field, not Serializer.errors
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=6, required=False)


class ModelUsageSerializer(UsageTotalsSerializer):
    """One model's usage over the whole range (its cache hit rate among it)."""

    model = serializers.CharField()


class UsageReportSerializer(serializers.Serializer):
    """The answer's shape, for the schema: the range, one row per day and model (or, with
    ``group_by``, one per key or member), and totals."""

    start = serializers.DateField()
    end = serializers.DateField()
    group_by = serializers.ChoiceField(choices=usage_breakdown.GROUPS, required=False)
    data = PolymorphicProxySerializer(  # type: ignore[assignment]  # a field, not Serializer.data
        component_name="UsageRowOrGroup",
        serializers=[UsageRowSerializer, UsageGroupSerializer],
        resource_type_field_name=None,
        many=True,
    )
    # per model over the range, with its cache hit rate (absent with group_by)
    models = ModelUsageSerializer(many=True, required=False)
    totals = UsageTotalsSerializer()


class UsageView(APIView):
    """Usage per UTC day, model and service tier for a date range; ``cost`` only for members who
    see billing."""

    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW

    @extend_schema(
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATE),
            OpenApiParameter("end", OpenApiTypes.DATE),
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=usage_breakdown.GROUPS),
            OpenApiParameter("key", OpenApiTypes.UUID),
        ],
        responses={200: UsageReportSerializer},
    )
    def get(self, request):
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start, end = query.validated_data["start"], query.validated_data["end"]
        tenant = request_tenant(request)
        key_id = query.validated_data.get("key")
        if key_id is not None and not ApiKey.objects.filter(tenant=tenant, pk=key_id).exists():
            raise serializers.ValidationError({"key": "No API key with this id in this organization."})
        if query.validated_data.get("group_by"):
            return self._grouped(request, tenant, query.validated_data["group_by"], start, end, key_id)
        rows = reports.usage_by_day(
            tenant, *reports.day_bounds(start, end), api_key_id=key_id, split_tiers=True
        )
        data = UsageRowSerializer(rows, many=True).data
        per_model = ModelUsageSerializer(reports.by_model(rows), many=True).data
        totals = reports.totals(rows)
        if not allows(request.user, tenant, PERM_VIEW_BILLING):
            for row in [*data, *per_model]:
                row.pop("cost", None)
            totals.pop("cost")
        else:
            totals["cost"] = f"{totals['cost']:.6f}"
        return Response({"start": start, "end": end, "data": data, "models": per_model, "totals": totals})

    def _grouped(self, request, tenant, group_by: str, start, end, key_id):
        """Usage per API key or per member over the range (one row each, most tokens first)."""
        bounds = reports.day_bounds(start, end)
        if group_by == "key":
            groups = usage_breakdown.by_key(tenant, *bounds, api_key_id=key_id)
        else:
            groups = usage_breakdown.by_member(tenant, *bounds, api_key_id=key_id)
        data = UsageGroupSerializer(groups, many=True).data
        totals = UsageGroupSerializer(usage_breakdown.totals(groups)).data
        for row in [*data, totals]:
            if group_by == "member":
                row.pop("member", None)
                row.pop("revoked", None)
            if not allows(request.user, tenant, PERM_VIEW_BILLING):
                row.pop("cost", None)
        for name in ("id", "name", "member", "revoked"):
            totals.pop(name, None)
        return Response({"start": start, "end": end, "group_by": group_by, "data": data, "totals": totals})


class UnitPriceField(serializers.DecimalField):
    """A per-million price as a string with all its significant decimals, at least six
    (``"0.100000"``; a tier's percent may give more: ``"0.0617285"``)."""

    def to_representation(self, value):
        exponent = Decimal(value).normalize().as_tuple().exponent
        places = max(UNIT_PRICE_PLACES, -int(exponent))
        return f"{Decimal(value):.{places}f}"


UNIT_PRICE_PLACES = 6


class UsageRecordSerializer(serializers.ModelSerializer):
    """One metered request, as the per-request CSV export has it."""

    time = serializers.DateTimeField(source="occurred_at")
    total_tokens = serializers.SerializerMethodField()
    ttft_ms = serializers.IntegerField(allow_null=True, help_text="Time to the first token (streams).")
    service_tier = serializers.ChoiceField(
        choices=ServiceTier.choices, help_text="The tier the request was served and is billed in."
    )
    queue_ms = serializers.IntegerField(help_text="Time the request waited in the gateway's admission queue.")
    batch_id = serializers.CharField(
        help_text="The /v1/batches batch the request was a line of; empty: none."
    )

    class Meta:
        model = UsageRecord
        fields = [
            "request_id", "time", "model", "endpoint", "api_key_id", "prompt_tokens", "cached_tokens",
            "completion_tokens", "total_tokens", "status", "http_status", "latency_ms", "ttft_ms",
            "service_tier", "queue_ms", "batch_id",
        ]  # fmt: skip

    def get_total_tokens(self, record) -> int:
        return record.prompt_tokens + record.completion_tokens


class UsageRecordFilterSerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First UTC day (default: 30 days ago).")
    end = serializers.DateField(required=False, help_text="Last UTC day, inclusive (default: today).")
    key = serializers.UUIDField(required=False, help_text="Only this API key's requests (its id).")
    model = serializers.CharField(required=False, max_length=200)
    service_tier = serializers.ChoiceField(required=False, choices=ServiceTier.choices)
    batch_id = serializers.CharField(required=False, max_length=64)

    def validate(self, attrs):
        today = timezone.now().astimezone(UTC).date()
        end = attrs.get("end") or today
        start = attrs.get("start") or end - timedelta(days=29)
        if start > end:
            raise serializers.ValidationError({"end": "The end date must be on or after the start date."})
        if (end - start).days + 1 > reports.MAX_RANGE_DAYS:
            raise serializers.ValidationError(
                {"start": f"Ask for at most {reports.MAX_RANGE_DAYS} days at a time."}
            )
        return {**attrs, "start": start, "end": end}


@extend_schema(parameters=[UsageRecordFilterSerializer])
class UsageRecordList(generics.ListAPIView):
    """The current organization's requests one by one, newest first: tokens, status, latency, the
    service tier served, the wait in the admission queue and the batch of a batch line."""

    serializer_class = UsageRecordSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW

    def get_queryset(self):
        # A filter given empty (``?start=``) is an error, as the schema says, not "no filter".
        blank = {
            name: ["This filter may not be blank; leave it out for no filter."]
            for name in map(str, UsageRecordFilterSerializer().fields)
            if name in self.request.query_params and not self.request.query_params[name].strip()
        }
        if blank:
            raise serializers.ValidationError(blank)
        query = UsageRecordFilterSerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        wanted = query.validated_data
        records = reports.records(
            request_tenant(self.request),
            *reports.day_bounds(wanted["start"], wanted["end"]),
            wanted.get("key"),
        )
        for name in ("model", "service_tier", "batch_id"):
            if name in wanted:
                records = records.filter(**{name: wanted[name]})
        return records.order_by("-occurred_at", "-pk")


class InvoiceLineSerializer(serializers.ModelSerializer):
    unit_price_per_million = UnitPriceField(
        max_digits=20,
        decimal_places=10,
        read_only=True,
        help_text="The model's price for this kind of token × the tier's percent, exact.",
    )

    class Meta:
        model = InvoiceLine
        fields = [
            "model",
            "kind",
            "service_tier",
            "tokens",
            "unit_price_per_million",
            "amount",
            "requests",
            "late_requests",
        ]


class InvoiceSerializer(serializers.ModelSerializer):
    lines = InvoiceLineSerializer(many=True, read_only=True)
    pdf_url = serializers.SerializerMethodField()

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "status",
            "currency",
            "period_start",
            "period_end",
            "subtotal",
            "total",
            "finalized_at",
            "due_at",
            "paid_at",
            "stripe_hosted_url",
            "pdf_url",
            "lines",
        ]

    def to_representation(self, invoice):
        data = super().to_representation(invoice)
        # Amounts in the currency's minor unit ("12.30" for USD), as strings like Stripe's docs show.
        for field in ("subtotal", "total"):
            data[field] = str(money.round_money(getattr(invoice, field), invoice.currency))
        for line, row in zip(invoice.lines.all(), data["lines"], strict=True):
            row["amount"] = str(money.round_money(line.amount, invoice.currency))
        return data

    def get_pdf_url(self, invoice) -> str:
        return self.context["request"].build_absolute_uri(f"/api/v1/invoices/{invoice.pk}/pdf")


class PDFRenderer(BaseRenderer):
    """Lets clients ask for ``Accept: application/pdf``; the view returns the bytes itself."""

    media_type = "application/pdf"
    format = "pdf"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class InvoiceViewSet(viewsets.ReadOnlyModelViewSet):
    """The current tenant's invoices (``view_billing``: owners, admins and billing members)."""

    serializer_class = InvoiceSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW_BILLING

    def get_queryset(self):
        return Invoice.objects.for_tenant(request_tenant(self.request)).prefetch_related("lines")

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # An error is JSON even when the client asked for the PDF (``?format=pdf``).
        if isinstance(response, Response) and response.status_code >= 400:
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = JSONRenderer.media_type
        return response

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"], renderer_classes=[JSONRenderer, PDFRenderer])
    def pdf(self, request, pk=None):
        invoice = self.get_object()
        response = HttpResponse(pdf.render(invoice), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{pdf.filename(invoice)}"'
        return response
