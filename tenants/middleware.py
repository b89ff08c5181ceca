"""Resolve the tenant a logged-in user is working in (``request.tenant``)."""

from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from tenants.models import Membership

SESSION_KEY = "berth_tenant_id"


def membership_for(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    memberships = Membership.objects.select_related("tenant", "tenant__plan").filter(user=user)
    chosen = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    if chosen:
        membership = memberships.filter(tenant_id=chosen).first()
        if membership:
            return membership
    return memberships.order_by("created_at").first()


class CurrentTenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.membership = SimpleLazyObject(lambda: membership_for(request))
        request.tenant = SimpleLazyObject(lambda: request.membership.tenant if request.membership else None)
        return self.get_response(request)
