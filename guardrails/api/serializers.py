"""Serializers for guardrail policies and the tenant's content settings."""

from __future__ import annotations

from rest_framework import serializers

from guardrails.models import DETECTORS, Action, ContentGovernance, GuardrailPolicy
from guardrails.policies import POLICY_FIELDS
from tenants.models import ApiKey


class TenantKeyField(serializers.PrimaryKeyRelatedField):
    """An API key of the current tenant (another tenant's key reads as not found)."""

    def get_queryset(self):
        tenant = self.context.get("tenant")
        return ApiKey.objects.filter(tenant=tenant) if tenant is not None else ApiKey.objects.none()


class GuardrailPolicySerializer(serializers.ModelSerializer):
    api_key = TenantKeyField(required=False, allow_null=True, pk_field=serializers.UUIDField())
    detectors = serializers.DictField(
        child=serializers.ChoiceField(choices=Action.choices),
        required=False,
        help_text=f"Detector → action; detectors: {', '.join(DETECTORS)}.",
    )
    blocked_terms = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=500
    )
    screen_examples = serializers.ListField(
        child=serializers.CharField(max_length=2000), required=False, max_length=100
    )

    class Meta:
        model = GuardrailPolicy
        fields = ["id", *POLICY_FIELDS, "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate_detectors(self, value):
        unknown = set(value) - set(DETECTORS)
        if unknown:
            raise serializers.ValidationError(
                f"Unknown detector(s): {', '.join(sorted(unknown))}. Use {', '.join(DETECTORS)}."
            )
        return value


class ContentGovernanceSerializer(serializers.ModelSerializer):
    # null until the tenant first saves its settings (the defaults are then shown unsaved)
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = ContentGovernance
        fields = ["log_content", "content_retention_days", "updated_at"]
        read_only_fields = ["updated_at"]
