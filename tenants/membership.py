"""Leaving a tenant: the membership goes, and so do the keys the person made there.

A removed member's inference keys would otherwise keep working in the gateway (it knows keys, not
people), and their management keys would come back to life if they were ever re-added. So removal
revokes every usable key they created in that tenant, in the same transaction, and tells the
tenant's owners and admins which keys stopped working, since scripts using them will now fail.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from tenants import accounts, keys
from tenants.constants import Role
from tenants.models import ApiKey, Membership, Tenant, User

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemovedMember:
    email: str
    revoked_keys: list[ApiKey]


def remove_member(*, tenant: Tenant, user: User, acting_user: User | None) -> RemovedMember:
    """Remove ``user`` from ``tenant`` and revoke their keys there; admins get an email after commit.

    Raises ``Membership.DoesNotExist`` if they are not a member, and ``ValidationError`` if they are
    its last owner. Permission to do this is the caller's check.
    """
    with transaction.atomic():
        membership = Membership.objects.get(tenant=tenant, user=user)
        theirs = list(
            # Locked before anything is recorded: the audit chain's lock comes after row locks.
            ApiKey.objects.for_tenant(tenant)
            .usable()
            .filter(created_by=user)
            .order_by("created_at")
            .select_for_update()
        )
        accounts.remove_member(membership=membership)
        revoked = [keys.revoke_api_key(api_key=api_key) for api_key in theirs]
        transaction.on_commit(
            lambda: _notify_admins(tenant=tenant, user=user, acting_user=acting_user, revoked=revoked)
        )
    return RemovedMember(email=user.email, revoked_keys=revoked)


def _notify_admins(*, tenant: Tenant, user: User, acting_user: User | None, revoked: list[ApiKey]) -> None:
    recipients = list(
        Membership.objects.filter(tenant=tenant, role__in=[Role.OWNER, Role.ADMIN])
        .exclude(user=user)
        .order_by("created_at")
        .values_list("user__email", flat=True)
    )
    if not recipients:
        return
    actor = acting_user.email if acting_user else "An operator"
    if revoked:
        listed = "\n".join(f"  - {k.name} ({k.display_prefix}…, {k.get_kind_display()})" for k in revoked)
        what = f"Their {len(revoked)} API key(s) in {tenant.name} were revoked and no longer work:\n{listed}"
    else:
        what = f"They had no active API keys in {tenant.name}."
    body = (
        f"{actor} removed {user.email} from {tenant.name} on Berth.\n\n{what}\n\n"
        "Anything that used these keys needs a new key from a current member."
    )
    try:
        send_mail(
            f"[Berth] {user.email} removed from {tenant.name}", body, settings.DEFAULT_FROM_EMAIL, recipients
        )
    except (smtplib.SMTPException, OSError):
        # The removal and revocations are committed; a mail outage must not turn them into an error.
        logger.exception("could not send the member-removal notice for %s in %s", user.email, tenant.slug)
