"""Serializers for the tenant-facing model list and the tenant's LoRA adapters."""

from __future__ import annotations

from rest_framework import serializers

from models_registry.constants import AdapterSourceKind
from models_registry.models import LoraAdapter, Model, Price


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
    currency = serializers.CharField()
    effective_from = serializers.DateTimeField()


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
        if getattr(model, "price_input", None) is None:
            return None
        price = Price(
            input_per_million=model.price_input,
            output_per_million=model.price_output,
            cached_input_per_million=getattr(model, "price_cached_own", None),
            currency=model.price_currency,
            effective_from=model.price_from,
        )
        return PriceSerializer(price).data


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
