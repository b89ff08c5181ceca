"""Serializers for the tenant-facing model list and the tenant's LoRA adapters."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from models_registry import catalog
from models_registry.constants import AdapterSourceKind
from models_registry.models import MAX_TIER_PERCENT, LoraAdapter, Model


def _percent_field(tier: str) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=6,
        decimal_places=2,
        min_value=Decimal(0),
        max_value=Decimal(MAX_TIER_PERCENT),
        read_only=True,
        help_text=f"Percent of these prices billed for service_tier {tier} (0 to {MAX_TIER_PERCENT}).",
    )


class TierPriceSerializer(serializers.Serializer):
    """The price in one service tier: the default price × the tier's percent / 100, exact."""

    tier = serializers.ChoiceField(choices=catalog.PERCENT_TIERS)
    percent = serializers.DecimalField(max_digits=6, decimal_places=2)
    input_per_million = serializers.DecimalField(max_digits=20, decimal_places=10)
    cached_input_per_million = serializers.DecimalField(max_digits=20, decimal_places=10)
    output_per_million = serializers.DecimalField(max_digits=20, decimal_places=10)


class PriceSerializer(serializers.Serializer):
    input_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    output_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_million = serializers.DecimalField(
        max_digits=12,
        decimal_places=6,
        source="cached_input_price",
        help_text="Per million input tokens served from the prefix cache (the price's own, or the "
        "input price times the operator's cached-input fraction).",
    )
    flex_percent = _percent_field("flex")
    priority_percent = _percent_field("priority")
    batch_percent = _percent_field("batch")
    tiers = serializers.SerializerMethodField(
        help_text="The prices in the flex, priority and batch tiers (requests with service_tier, "
        "and /v1/batches lines)."
    )
    currency = serializers.CharField()
    effective_from = serializers.DateTimeField()

    def to_representation(self, price):
        data = super().to_representation(price)
        # The effective percents: the row's own, else the operator's default.
        for tier in catalog.PERCENT_TIERS:
            data[f"{tier}_percent"] = f"{price.tier_percent(tier):.2f}"
        return data

    @extend_schema_field(TierPriceSerializer(many=True))
    def get_tiers(self, price) -> list:
        return TierPriceSerializer(catalog.tier_prices(price), many=True).data


class ModelSerializer(serializers.ModelSerializer):
    price = serializers.SerializerMethodField()
    supports_tools = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = [
            "id",
            "name",
            "task",
            "context_length",
            "visibility",
            "price",
            "supports_tools",
            "tool_call_parser",
            "created_at",
        ]

    def get_supports_tools(self, model) -> bool:
        """Automatic tool calls (``tool_choice: "auto"``) on vLLM need the model's parser."""
        return bool(model.tool_call_parser)

    def get_price(self, model) -> dict | None:
        # Filled by the view's annotations: one query for the whole page, not one per model.
        price = catalog.annotated_price(model)
        return None if price is None else PriceSerializer(price).data


class AdapterSerializer(serializers.ModelSerializer):
    """A tenant's LoRA adapter. ``model`` is what clients send to /v1 once it is ready."""

    model = serializers.CharField(source="served_name", read_only=True)
    base_model = serializers.CharField(source="base_model.name")
    source_kind = serializers.ChoiceField(choices=AdapterSourceKind.choices, required=False)
    revision = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    price = serializers.SerializerMethodField()

    class Meta:
        model = LoraAdapter
        fields = [
            "id",
            "name",
            "model",
            "base_model",
            "source_kind",
            "source",
            "revision",
            "rank",
            "size_bytes",
            "visibility",
            "status",
            "status_reason",
            "manifest_digest",
            "price",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "rank",
            "size_bytes",
            "visibility",
            "status",
            "status_reason",
            "manifest_digest",
            "created_at",
        ]
        # The registration's own checks answer for the name (per tenant, among live adapters).
        extra_kwargs = {"name": {"validators": []}}

    def get_price(self, adapter) -> dict | None:
        price = adapter.current_price()
        if price is None:
            return None
        return PriceSerializer(price).data
