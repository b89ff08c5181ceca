"""``/api/v1/webhooks``: the current organization's webhook endpoints and their delivery log.

Owners and admins (``manage_settings``) only, reading included: an endpoint's URL and log say
where the organization's billing data goes. The secret is in the answer to create and
``rotate-secret`` only.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response

from tenants.api.permissions import TenantPermission, request_tenant
from tenants.constants import PERM_MANAGE_SETTINGS
from webhooks import endpoints, events
from webhooks.api.serializers import (
    CreatedWebhookEndpointSerializer,
    WebhookDeliveryPageSerializer,
    WebhookDeliverySerializer,
    WebhookEndpointSerializer,
)
from webhooks.models import WebhookEndpoint


def _django_error(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages})


class DeliveryPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


class WebhookEndpointViewSet(viewsets.ModelViewSet):
    """Webhook endpoints of the current organization."""

    serializer_class = WebhookEndpointSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_MANAGE_SETTINGS
    write_perm = PERM_MANAGE_SETTINGS
    http_method_names = ["get", "post", "patch", "put", "delete", "head", "options"]

    def get_queryset(self):
        return WebhookEndpoint.objects.for_tenant(request_tenant(self.request))

    @extend_schema(responses={201: CreatedWebhookEndpointSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            endpoint = endpoints.create(
                tenant=request_tenant(request),
                user=request.user,
                request=request,
                **serializer.validated_data,
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc
        return Response(CreatedWebhookEndpointSerializer(endpoint).data, status=201)

    def perform_update(self, serializer):
        try:
            serializer.instance = endpoints.update(
                endpoint=serializer.instance,
                user=self.request.user,
                request=self.request,
                **serializer.validated_data,
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc

    def perform_destroy(self, instance):
        endpoints.delete(endpoint=instance, user=self.request.user, request=self.request)

    @extend_schema(request=None, responses={200: CreatedWebhookEndpointSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        endpoint = endpoints.rotate_secret(endpoint=self.get_object(), user=request.user, request=request)
        return Response(CreatedWebhookEndpointSerializer(endpoint).data)

    @extend_schema(request=None, responses={202: WebhookDeliverySerializer})
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        """Send a ``webhook.test`` event to this (enabled) endpoint now."""
        endpoint = self.get_object()
        if not endpoint.enabled:
            raise ValidationError({"detail": "The endpoint is disabled: enable it to send a test event."})
        event = events.send_test(endpoint=endpoint)
        return Response(WebhookDeliverySerializer(event.deliveries.get(endpoint=endpoint)).data, status=202)

    @extend_schema(
        parameters=[
            OpenApiParameter("limit", OpenApiTypes.INT),
            OpenApiParameter("offset", OpenApiTypes.INT),
        ],
        responses={200: WebhookDeliveryPageSerializer},
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """The endpoint's deliveries, newest first, each with its attempts."""
        endpoint = self.get_object()
        qs = (
            endpoint.deliveries.select_related("event")
            .prefetch_related("attempt_log")
            .order_by("-created_at")
        )
        paginator = DeliveryPagination()
        page: list | None = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)
