"""Inviting people to a tenant by email, and accepting invitations.

The emailed link carries a random token; only its SHA-256 is stored, so the database alone
cannot be used to accept an invitation. Accepting is idempotent and single-use, and takes an
account logged in with the invited address, verified: an invitation is the only way into a
tenant, so an account someone pre-registered with another person's address never gets in.

Inviting makes the platform mail an address someone typed: only verified accounts may, and a
tenant sends at most ``settings.INVITATIONS_PER_TENANT_PER_DAY`` in any 24 hours (counted in
PostgreSQL under a lock on the tenant, so concurrent requests cannot pass the cap together).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from audit import trail
from tenants import accounts, verification
from tenants.models import Invitation, Membership, Tenant, User

INVITATION_TTL = timedelta(days=7)
CAP_WINDOW = timedelta(days=1)


class LimitReached(Exception):
    """The tenant sent its day's invitations; ``retry_after`` seconds until one more may go."""

    def __init__(self, *, retry_after: int):
        self.retry_after = retry_after
        hours = max(1, -(-retry_after // 3600))
        super().__init__(
            f"Your organization sent {settings.INVITATIONS_PER_TENANT_PER_DAY} invitations in the "
            f"last 24 hours, the most it may. Try again in {hours} hour{'s' if hours != 1 else ''}."
        )


@dataclass(frozen=True)
class SentInvitation:
    invitation: Invitation
    url: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite(
    *, tenant: Tenant, email: str, role: str, invited_by: User | None, base_url: str
) -> SentInvitation:
    email = email.strip().lower()
    if invited_by is not None:
        verification.require_verified(invited_by)
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
        raise ValidationError({"email": "This person is already a member."})
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
        _check_cap(tenant)
        # A new invitation replaces any pending one for the same address.
        Invitation.objects.pending().filter(tenant=tenant, email__iexact=email).update(
            revoked_at=timezone.now()
        )
        invitation = Invitation.objects.create(
            tenant=tenant,
            email=email,
            role=role,
            token_hash=_hash(token),
            invited_by=invited_by,
            expires_at=timezone.now() + INVITATION_TTL,
        )
        trail.record(
            action="invitation.sent",
            tenant=tenant,
            actor=invited_by,
            target=invitation,
            summary=f"{email} invited as {role}",
            after={"email": email, "role": role, "expires_at": invitation.expires_at},
        )
        url = base_url.rstrip("/") + reverse("console:accept-invitation", args=[token])
        inviter = invited_by.email if invited_by else "An administrator"
        transaction.on_commit(
            lambda: send_mail(
                subject=f"Join {tenant.name} on Berth",
                message=(
                    f"{inviter} invited you to join {tenant.name} on Berth as {invitation.get_role_display()}.\n\n"
                    f"Accept within 7 days: {url}\n\nIf you did not expect this, ignore this email."
                ),
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=[email],
            )
        )
    return SentInvitation(invitation=invitation, url=url)


def _check_cap(tenant: Tenant) -> None:
    since = timezone.now() - CAP_WINDOW
    recent = Invitation.objects.filter(tenant=tenant, created_at__gt=since).order_by("created_at")
    if recent.count() >= settings.INVITATIONS_PER_TENANT_PER_DAY:
        oldest = recent.values_list("created_at", flat=True).first()
        raise LimitReached(retry_after=max(1, int((oldest - since).total_seconds())))


def find(token: str) -> Invitation | None:
    """The pending invitation behind a token, or None (unknown, used, revoked or expired)."""
    invitation = Invitation.objects.select_related("tenant").filter(token_hash=_hash(token)).first()
    return invitation if invitation and invitation.is_pending else None


def accept(*, token: str, user: User) -> Membership:
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().filter(token_hash=_hash(token)).first()
        if invitation is None or not invitation.is_pending:
            raise ValidationError("This invitation is no longer valid. Ask for a new one.")
        if invitation.email.lower() != user.email.lower():
            raise ValidationError(f"This invitation is for {invitation.email}. Log in with that address.")
        if not user.email_verified:
            raise ValidationError(verification.UNVERIFIED.format(email=user.email))
        membership = Membership.objects.filter(tenant=invitation.tenant, user=user).first()
        if membership is None:
            membership = accounts.add_member(tenant=invitation.tenant, user=user, role=invitation.role)
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        trail.record(
            action="invitation.accepted",
            tenant=invitation.tenant,
            actor=user,
            target=invitation,
            summary=f"{user.email} accepted the invitation as {invitation.role}",
            after={"email": invitation.email, "role": invitation.role},
        )
    return membership


def revoke(*, invitation: Invitation) -> None:
    with transaction.atomic():
        revoked = Invitation.objects.filter(pk=invitation.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            trail.record(
                action="invitation.revoked",
                tenant=invitation.tenant,
                target=invitation,
                summary=f"invitation of {invitation.email} revoked",
                before={"email": invitation.email, "role": invitation.role},
            )
