"""Management API views: the current tenant, its members and its API keys.

Nobody is added to a tenant directly: ``POST /members/`` sends an invitation exactly like
``POST /invitations/``, and answers the same whether or not the address has an account.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, Throttled, ValidationError
from rest_framework.response import Response

from tenants import accounts, invitations, keys, throttling, verification
from tenants import membership as memberships
from tenants.api.permissions import TenantPermission, request_membership, request_tenant
from tenants.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeySerializer,
    InvitationCreateSerializer,
    InvitationSerializer,
    MemberCreateSerializer,
    MemberSerializer,
    TenantSerializer,
)
from tenants.constants import (
    PERM_MANAGE_KEYS,
    PERM_MANAGE_MEMBERS,
    PERM_MANAGE_SETTINGS,
    PERM_USE_KEYS,
)
from tenants.models import ApiKey, Invitation, Membership
from tenants.permissions import allows


def _django_error(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages})


def _check_assign(request, *, role: str, target: Membership | None = None) -> None:
    try:
        accounts.check_can_assign(actor=request_membership(request), role=role, target=target)
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from exc


INVITE_RESPONSES = {
    201: InvitationSerializer,
    400: OpenApiResponse(description="Invalid address or role, or the person is already a member."),
    403: OpenApiResponse(
        description="No permission, a role only owners grant, or your address is unverified."
    ),
    429: OpenApiResponse(description="Too many invitations from you, or from your organization today."),
}


def _require_verified(request) -> None:
    try:
        verification.require_verified(request.user)
    except verification.Unverified as exc:
        raise PermissionDenied(str(exc)) from exc


def _invite(request) -> Response:
    """Throttled per IP and per inviting account, capped per tenant per day (429 either way)."""
    data = InvitationCreateSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    wait = throttling.check(request, flow="invitation", account=str(request.user.pk))
    if wait:
        raise Throttled(wait=wait, detail=throttling.message(wait))
    _require_verified(request)
    _check_assign(request, role=data.validated_data["role"])
    try:
        sent = invitations.invite(
            tenant=request_tenant(request),
            email=data.validated_data["email"],
            role=data.validated_data["role"],
            invited_by=request.user,
            base_url=request.build_absolute_uri("/"),
        )
    except invitations.LimitReached as exc:
        raise Throttled(wait=exc.retry_after, detail=str(exc)) from exc
    except DjangoValidationError as exc:
        raise _django_error(exc) from exc
    return Response(InvitationSerializer(sent.invitation).data, status=status.HTTP_201_CREATED)


class CurrentTenantView(generics.RetrieveUpdateAPIView):
    """The organization this session or key acts in."""

    serializer_class = TenantSerializer
    permission_classes = [TenantPermission]
    write_perm = PERM_MANAGE_SETTINGS
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self):
        return request_tenant(self.request)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "membership": request_membership(self.request)}


class MemberViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Members of the current tenant. Inviting, re-roling and removing needs ``manage_members``."""

    serializer_class = MemberSerializer
    permission_classes = [TenantPermission]
    write_perm = PERM_MANAGE_MEMBERS
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return Membership.objects.for_tenant(request_tenant(self.request)).select_related("user")

    @extend_schema(
        request=MemberCreateSerializer,
        responses=INVITE_RESPONSES,
        description="Invites the address to join (an email with a single-use link); it becomes a "
        "member when that person accepts, logged in with the address, verified.",
    )
    def create(self, request, *args, **kwargs):
        return _invite(request)

    def perform_update(self, serializer):
        _check_assign(
            self.request,
            role=serializer.validated_data.get("role", serializer.instance.role),
            target=serializer.instance,
        )
        try:
            serializer.instance = accounts.change_role(
                membership=serializer.instance,
                role=serializer.validated_data.get("role", serializer.instance.role),
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc

    def perform_destroy(self, instance):
        _check_assign(self.request, role=instance.role, target=instance)
        try:
            memberships.remove_member(
                tenant=instance.tenant, user=instance.user, acting_user=self.request.user
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """API keys of the current tenant. The secret is returned once, by ``create``; ``DELETE``
    revokes (the key stays listed as revoked)."""

    serializer_class = ApiKeySerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_USE_KEYS
    write_perm = PERM_USE_KEYS

    def get_queryset(self):
        return ApiKey.objects.for_tenant(request_tenant(self.request)).select_related("created_by")

    @extend_schema(responses={201: ApiKeyCreatedSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        _require_verified(request)
        try:
            created = keys.create_api_key(
                tenant=request_tenant(request), created_by=request.user, **serializer.validated_data
            )
        except DjangoValidationError as exc:
            raise _django_error(exc) from exc
        data = ApiKeyCreatedSerializer(created.api_key).data
        data["key"] = created.plaintext
        return Response(data, status=status.HTTP_201_CREATED)

    def _revoke(self, api_key: ApiKey) -> ApiKey:
        tenant = request_tenant(self.request)
        if api_key.created_by_id != self.request.user.pk and not allows(
            self.request.user, tenant, PERM_MANAGE_KEYS
        ):
            raise PermissionDenied("Only admins can revoke keys created by someone else.")
        return keys.revoke_api_key(api_key=api_key)

    def perform_destroy(self, instance):
        self._revoke(instance)

    @extend_schema(request=None, responses={200: ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        return Response(ApiKeySerializer(self._revoke(self.get_object())).data)


class InvitationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Pending invitations of the current tenant; create emails a single-use link, DELETE revokes."""

    serializer_class = InvitationSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_MANAGE_MEMBERS
    write_perm = PERM_MANAGE_MEMBERS

    def get_queryset(self):
        return Invitation.objects.pending().filter(tenant=request_tenant(self.request))

    @extend_schema(request=InvitationCreateSerializer, responses=INVITE_RESPONSES)
    def create(self, request, *args, **kwargs):
        return _invite(request)

    def perform_destroy(self, instance):
        invitations.revoke(invitation=instance)
