"""``GET /api/v1/models``: the models the request's tenant may use, with their current prices."""

from __future__ import annotations

from rest_framework import mixins, viewsets

from models_registry.api.serializers import ModelSerializer
from models_registry.models import Model
from tenants.api.permissions import TenantPermission, request_tenant


class ModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Models visible to the current tenant. Another tenant's private model is a 404."""

    serializer_class = ModelSerializer
    permission_classes = [TenantPermission]
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        return Model.objects.visible_to(request_tenant(self.request)).with_current_price()
