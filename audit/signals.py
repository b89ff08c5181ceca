"""Logins, failed logins and logouts, from Django's auth signals (console and admin alike).

A failed login records the username attempted (never the password): a run of them against one
address is what an operator looks for. It has no tenant, so only staff see it.
"""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit import trail
from audit.constants import ActorKind


def _tenant_of(request):
    tenant = getattr(request, "tenant", None) if request is not None else None
    return tenant if tenant else None


@receiver(user_logged_in, dispatch_uid="audit.login")
def _logged_in(sender, request, user, **kwargs):
    trail.record(
        action="auth.login",
        actor=user,
        tenant=_tenant_of(request),
        target=user,
        summary=f"{user.email} logged in",
        request=request,
    )


@receiver(user_logged_out, dispatch_uid="audit.logout")
def _logged_out(sender, request, user, **kwargs):
    if user is None:
        return
    trail.record(
        action="auth.logout",
        actor=user,
        tenant=_tenant_of(request),
        target=user,
        summary=f"{user.email} logged out",
        request=request,
    )


@receiver(user_login_failed, dispatch_uid="audit.login_failed")
def _login_failed(sender, credentials, request=None, **kwargs):
    attempted = str(credentials.get("username") or credentials.get("email") or "")[:254]
    trail.record(
        action="auth.login_failed",
        actor_kind=ActorKind.SYSTEM,
        actor_label=attempted or "unknown",
        summary=f"failed login for {attempted or 'an empty username'}",
        after={"username": attempted},
        request=request,
    )
