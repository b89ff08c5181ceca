"""Logins, failed logins and logouts (Django's auth signals), and staff changes in the admin.

A failed login records the username attempted (never the password): a run of them against one
address is what an operator looks for. It has no tenant, so only staff see it.
"""

from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_save
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


# Admin changes to objects whose service functions do not record them already (deployments,
# nodes, plans, memberships edited in the admin…), from the admin's own LogEntry.
RECORDED_BY_SERVICES = {
    ("tenants", "tenant"),
    ("tenants", "apikey"),
    ("models_registry", "model"),
    ("models_registry", "price"),
}
# The membership admin deletes through tenants.membership (which records member.removed, and
# may refuse: the last owner); its role edits are plain saves, recorded from the log entry.
DELETED_BY_SERVICES = {("tenants", "membership")}
ADMIN_VERBS = {ADDITION: "created", CHANGE: "changed", DELETION: "deleted"}


@receiver(post_save, sender=LogEntry, dispatch_uid="audit.admin_change")
def _admin_change(sender, instance: LogEntry, created: bool, **kwargs):
    content_type = instance.content_type
    if not created or content_type is None:
        return
    kind = (content_type.app_label, content_type.model)
    if kind in RECORDED_BY_SERVICES or (instance.action_flag == DELETION and kind in DELETED_BY_SERVICES):
        return
    verb = ADMIN_VERBS.get(instance.action_flag, "changed")
    target = None
    if instance.action_flag != DELETION:
        target = content_type.model_class()._default_manager.filter(pk=instance.object_id).first()
    tenant = getattr(target, "tenant", None)
    trail.record(
        action=f"{content_type.model}.{verb}",
        tenant=tenant,
        actor=instance.user,
        actor_kind=ActorKind.STAFF,
        target_type=f"{content_type.app_label}.{content_type.model}",
        target_id=str(instance.object_id or ""),
        summary=f"{instance.object_repr} {verb} in the admin: {instance.get_change_message() or 'no fields'}",
    )
