"""Serializers for the tenant-facing model list."""

from __future__ import annotations

from rest_framework import serializers

from models_registry.models import Model


class PriceSerializer(serializers.Serializer):
    input_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    output_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
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
        return PriceSerializer(
            {
                "input_per_million": model.price_input,
                "output_per_million": model.price_output,
                "currency": model.price_currency,
                "effective_from": model.price_from,
            }
        ).data
