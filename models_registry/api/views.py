"""``GET /api/v1/models``: the models the request's tenant may use, with their current prices."""

from __future__ import annotations

from django.db.models import OuterRef, Subquery
from django.utils import timezone
from rest_framework import mixins, viewsets

from models_registry.api.serializers import ModelSerializer
from models_registry.models import Model, Price
from tenants.api.permissions import TenantPermission, request_tenant


class ModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Models visible to the current tenant. Another tenant's private model is a 404."""

    serializer_class = ModelSerializer
    permission_classes = [TenantPermission]
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        current = Price.objects.filter(model=OuterRef("pk"), effective_from__lte=timezone.now()).order_by(
            "-effective_from"
        )
        return Model.objects.visible_to(request_tenant(self.request)).annotate(
            price_input=Subquery(current.values("input_per_million")[:1]),
            price_output=Subquery(current.values("output_per_million")[:1]),
            price_currency=Subquery(current.values("currency")[:1]),
            price_from=Subquery(current.values("effective_from")[:1]),
        )
