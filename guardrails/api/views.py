"""``/api/v1/guardrails``: the current tenant's guardrail policies, and its content settings.

Every member can read them (they govern the member's own requests); changing them needs
``manage_settings`` (owners and admins). Platform defaults (no tenant) are staff's, in the admin.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import generics, viewsets
from rest_framework.exceptions import ValidationError

from guardrails import policies
from guardrails.api.serializers import ContentGovernanceSerializer, GuardrailPolicySerializer
from guardrails.models import GuardrailPolicy
from tenants.api.permissions import TenantPermission, request_tenant
from tenants.constants import PERM_MANAGE_SETTINGS, PERM_VIEW


def _django_error(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages})


class GuardrailPolicyViewSet(viewsets.ModelViewSet):
    """Guardrail policies of the current organization (per organization or per API key)."""

    serializer_class = GuardrailPolicySerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW
    write_perm = PERM_MANAGE_SETTINGS
    http_method_names = ["get", "post", "patch", "put", "delete", "head", "options"]

    def get_queryset(self):
        return GuardrailPolicy.objects.for_tenant(request_tenant(self.request)).select_related("api_key")

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "tenant": request_tenant(self.request)}

    def perform_create(self, serializer):
        try:
            serializer.instance = policies.create_policy(
                tenant=request_tenant(self.request), created_by=self.request.user, **serializer.validated_data
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc

    def perform_update(self, serializer):
        try:
            serializer.instance = policies.update_policy(
                policy=serializer.instance, **serializer.validated_data
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc

    def perform_destroy(self, instance):
        policies.delete_policy(policy=instance)


class ContentGovernanceView(generics.RetrieveUpdateAPIView):
    """Whether request content of the current organization is logged, and for how many days."""

    serializer_class = ContentGovernanceSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW
    write_perm = PERM_MANAGE_SETTINGS
    http_method_names = ["get", "put", "patch", "head", "options"]

    def get_object(self):
        return policies.governance_of(request_tenant(self.request))

    def perform_update(self, serializer):
        current = serializer.instance
        data = serializer.validated_data
        try:
            serializer.instance = policies.set_governance(
                tenant=request_tenant(self.request),
                log_content=data.get("log_content", current.log_content),
                content_retention_days=data.get("content_retention_days", current.content_retention_days),
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc
