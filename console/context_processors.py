"""Template context shared by every console page."""

from django.conf import settings
from django.utils.functional import SimpleLazyObject


def _memberships(request):
    from tenants.models import Membership

    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    return list(Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name"))


def _can_view_billing(request) -> bool:
    from tenants.constants import PERM_VIEW_BILLING
    from tenants.permissions import allows

    return allows(getattr(request, "user", None), getattr(request, "tenant", None), PERM_VIEW_BILLING)


def _can_view_audit(request) -> bool:
    from audit.filters import PERM_VIEW_AUDIT
    from tenants.permissions import allows

    return allows(getattr(request, "user", None), getattr(request, "tenant", None), PERM_VIEW_AUDIT)


def _can_manage_settings(request) -> bool:
    from tenants.constants import PERM_MANAGE_SETTINGS
    from tenants.permissions import allows

    return allows(getattr(request, "user", None), getattr(request, "tenant", None), PERM_MANAGE_SETTINGS)


def console(request):
    return {
        "can_view_billing": SimpleLazyObject(lambda: _can_view_billing(request)),
        "can_view_audit": SimpleLazyObject(lambda: _can_view_audit(request)),
        "can_manage_settings": SimpleLazyObject(lambda: _can_manage_settings(request)),
        "gateway_url": settings.GATEWAY_PUBLIC_URL,
        "current_tenant": getattr(request, "tenant", None) or None,
        "current_membership": getattr(request, "membership", None) or None,
        "memberships": SimpleLazyObject(lambda: _memberships(request)),
    }
