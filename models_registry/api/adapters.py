"""``/api/v1/adapters``: the current tenant's LoRA adapters (list, create, retrieve, delete).

An adapter is addressed by its name (``/api/v1/adapters/support-v2``); another tenant's adapter is
a 404 like one that does not exist. Creating one answers 201 with ``status`` ``ready`` (a folder
on the server, checked at once) or ``pending`` (a Hub repo or URL, fetched and checked by a task:
poll until ``ready`` or ``failed`` with ``status_reason``). Any member may list; registering and
deleting need the ``manage_settings`` permission (owners and admins).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from models_registry import adapters
from models_registry.api.serializers import AdapterSerializer
from models_registry.models import LoraAdapter
from tenants.api.permissions import TenantPermission, request_tenant
from tenants.constants import PERM_MANAGE_SETTINGS, PERM_VIEW


class AdapterViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = AdapterSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW
    write_perm = PERM_MANAGE_SETTINGS
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        tenant = request_tenant(self.request)
        return LoraAdapter.objects.of_tenant(tenant).select_related("tenant", "base_model").order_by("name")

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            adapter = adapters.create_adapter(
                tenant=request_tenant(request),
                name=data["name"],
                base_model=data["base_model"]["name"],
                source=data["source"],
                revision=data.get("revision", ""),
                source_kind=data.get("source_kind"),
            )
        except DjangoValidationError as exc:
            raise ValidationError(
                exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
            ) from exc
        return Response(self.get_serializer(adapter).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        adapters.delete_adapter(adapter=instance)
