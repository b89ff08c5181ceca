"""Tenant resolution and guardian-backed permission checks for the management API."""

from __future__ import annotations

from rest_framework import exceptions, permissions

from tenants.constants import PERM_VIEW
from tenants.models import ApiKey, Membership
from tenants.permissions import allows


def request_tenant(request):
    """The tenant the request acts in: the key's tenant, else the session's current tenant."""
    if isinstance(request.auth, ApiKey):
        return request.auth.tenant
    tenant = getattr(request._request, "tenant", None)
    return tenant if tenant else None


def request_membership(request) -> Membership | None:
    tenant = request_tenant(request)
    if tenant is None or not request.user or not request.user.is_authenticated:
        return None
    return Membership.objects.filter(tenant=tenant, user=request.user).first()


class TenantPermission(permissions.BasePermission):
    """Requires membership of the current tenant plus a tenant object permission.

    Views name the permission for reading (``read_perm``) and writing (``write_perm``).
    """

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False  # DRF answers 401 with WWW-Authenticate: Bearer, not "not a member"
        tenant = request_tenant(request)
        if tenant is None:
            raise exceptions.PermissionDenied("You are not a member of any organization.")
        perm = getattr(view, "read_perm", PERM_VIEW)
        if request.method not in permissions.SAFE_METHODS:
            perm = getattr(view, "write_perm", perm)
        return allows(request.user, tenant, perm)
