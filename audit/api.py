"""``GET /api/v1/audit``: the current tenant's audit entries, newest first, paginated.

Same filter as the console (``audit.filters``: ``action``, ``actor``, ``actor_kind``, ``start``,
``end``), same readers (owners and admins), scoped to the request's tenant: a session's current
tenant or a management key's tenant.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import ValidationError

from audit import filters
from audit.models import AuditEntry
from tenants.api.permissions import TenantPermission, request_tenant


class AuditEntrySerializer(serializers.ModelSerializer):
    actor = serializers.SerializerMethodField()
    target = serializers.SerializerMethodField()
    time = serializers.DateTimeField(source="created_at")

    class Meta:
        model = AuditEntry
        fields = [
            "id", "seq", "time", "action", "actor", "target", "summary", "before", "after", "ip",
            "user_agent", "prev_hash", "hash",
        ]  # fmt: skip

    def get_actor(self, entry: AuditEntry) -> dict:
        return {"kind": entry.actor_kind, "label": entry.actor_label}

    def get_target(self, entry: AuditEntry) -> dict:
        return {"type": entry.target_type, "id": entry.target_id}


class AuditFilterSerializer(serializers.Serializer):
    action = serializers.CharField(required=False, max_length=64)
    actor = serializers.CharField(required=False, max_length=254)
    actor_kind = serializers.ChoiceField(required=False, choices=filters.ActorKind.choices)
    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)

    def validate(self, attrs):
        if attrs.get("start") and attrs.get("end") and attrs["start"] > attrs["end"]:
            raise serializers.ValidationError({"start": "The start date is after the end date."})
        return attrs


@extend_schema(parameters=[AuditFilterSerializer])
class AuditEntryList(generics.ListAPIView):
    """Audit entries of the current organization (owners and admins)."""

    serializer_class = AuditEntrySerializer
    permission_classes = [TenantPermission]
    read_perm = filters.PERM_VIEW_AUDIT

    def get_queryset(self):
        # A filter given empty (``?start=``) is an error, as the schema says, not "no filter".
        blank = {
            name: ["This filter may not be blank; leave it out for no filter."]
            for name in AuditFilterSerializer().fields
            if name in self.request.query_params and not self.request.query_params[name].strip()
        }
        if blank:
            raise ValidationError(blank)
        query = AuditFilterSerializer(data=self.request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        return filters.apply(
            AuditEntry.objects.for_tenant(request_tenant(self.request)), query.validated_data
        ).order_by("-seq")
