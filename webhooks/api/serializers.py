from __future__ import annotations

from rest_framework import serializers

from webhooks.constants import SUBSCRIBABLE
from webhooks.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint


class WebhookEndpointSerializer(serializers.ModelSerializer):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=[(str(c), c.label) for c in SUBSCRIBABLE]), allow_empty=False
    )
    secret_hint = serializers.SerializerMethodField(help_text="The secret's last four characters.")

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "events", "enabled", "secret_hint", "created_at", "updated_at"]
        read_only_fields = ["id", "secret_hint", "created_at", "updated_at"]

    def get_secret_hint(self, endpoint: WebhookEndpoint) -> str:
        return "…" + endpoint.secret[-4:]


class CreatedWebhookEndpointSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once: keep it to verify signatures.")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "started_at", "status_code", "latency_ms", "response_snippet", "error"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    event_id = serializers.CharField(source="event.id")
    event_type = serializers.CharField(source="event.type")
    attempt_log = DeliveryAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event_id",
            "event_type",
            "state",
            "attempts",
            "next_attempt_at",
            "created_at",
            "completed_at",
            "attempt_log",
        ]


class WebhookDeliveryPageSerializer(serializers.Serializer):
    """One page of an endpoint's deliveries (``?limit=&offset=``)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = WebhookDeliverySerializer(many=True)
