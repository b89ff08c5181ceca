"""Serializers for the tenant, members and API keys."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import exceptions, serializers

from contract import tiers
from tenants import residency
from tenants.constants import KeyKind, Role
from tenants.models import ApiKey, Invitation, Membership, Plan, Tenant


class PlanSerializer(serializers.ModelSerializer):
    service_tiers = serializers.SerializerMethodField(
        help_text="The service_tier values the plan's requests may ask for (besides auto)."
    )

    class Meta:
        model = Plan
        fields = [
            "slug",
            "name",
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent_requests",
            "monthly_token_budget",
            "monthly_spend_limit",
            "currency",
            "priority_band",
            "fair_share_weight",
            "monthly_batch_token_budget",
            "service_tiers",
        ]

    def get_service_tiers(self, plan) -> list[str]:
        return list(tiers.allowed_tiers(plan.priority_band))


class TenantSerializer(serializers.ModelSerializer):
    plan = PlanSerializer(read_only=True)
    role = serializers.SerializerMethodField()

    class Meta:
        model = Tenant
        fields = ["id", "name", "slug", "status", "plan", "data_residency", "created_at", "role"]
        read_only_fields = ["id", "slug", "status", "plan", "created_at", "role"]

    def get_role(self, tenant) -> str | None:
        membership = self.context.get("membership")
        return membership.role if membership else None

    def validate_data_residency(self, value: str) -> str:
        value = (value or "").strip().lower()
        if self.instance is not None and value != self.instance.data_residency:
            if not residency.may_change(self.context.get("membership")):
                raise exceptions.PermissionDenied("Only owners can change the data-residency requirement.")
            if value and value not in residency.available_labels():
                raise serializers.ValidationError(f"No node has the residency label {value!r}.")
        return value

    def update(self, instance, validated_data):
        if "data_residency" in validated_data:
            residency.set_requirement(tenant=instance, label=validated_data.pop("data_residency"))
        return super().update(instance, validated_data)


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)
    name = serializers.CharField(source="user.get_full_name", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "name", "role", "created_at"]
        read_only_fields = ["id", "email", "name", "created_at"]


class MemberCreateSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class ApiKeySerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    status = serializers.CharField(read_only=True)
    created_by = serializers.EmailField(source="created_by.email", read_only=True, default=None)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=100
    )
    kind = serializers.ChoiceField(choices=KeyKind.choices, default=KeyKind.INFERENCE)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "kind",
            "prefix",
            "status",
            "allowed_models",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "created_at",
            "created_by",
        ]
        read_only_fields = [
            "id",
            "prefix",
            "status",
            "last_used_at",
            "revoked_at",
            "created_at",
            "created_by",
        ]

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Expiry must be in the future.")
        return value


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """The one response that carries the secret."""

    key = serializers.CharField(read_only=True)

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class InvitationSerializer(serializers.ModelSerializer):
    invited_by = serializers.EmailField(source="invited_by.email", read_only=True, default=None)

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "invited_by", "created_at", "expires_at"]
        read_only_fields = fields


class InvitationCreateSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)
