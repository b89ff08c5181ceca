"""Proving that a self-service sign-up owns its email address.

The emailed link carries a signed, timestamped token (``django.core.signing``) naming the user
and the address it was sent to: nothing is stored, it expires after
``settings.EMAIL_VERIFICATION_MAX_AGE`` and stops working if the address changes. Following it
only counts while logged in as that account, so someone who pre-registers another person's
address cannot have that person verify it for them by clicking a link they did not ask for.
Until then the account can log in but cannot create keys, invite, or join other tenants.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse

from tenants.models import User

SALT = "berth.tenants.verification"
UNVERIFIED = (
    "Verify your email address first: follow the link we sent to {email}. "
    "Until then you cannot create API keys, invite people or join other organizations."
)


def make_token(user: User) -> str:
    return signing.dumps({"u": user.pk, "e": user.email}, salt=SALT)


def send(*, user: User, base_url: str) -> str:
    """Mail ``user`` a verification link (after the current transaction commits); returns it."""
    url = base_url.rstrip("/") + reverse("verify-email", args=[make_token(user)])
    hours = settings.EMAIL_VERIFICATION_MAX_AGE // 3600
    transaction.on_commit(
        lambda: send_mail(
            subject="Verify your email address for Berth",
            message=(
                f"Confirm that {user.email} is yours to finish setting up your Berth account.\n\n"
                f"Open this link while logged in (it works for {hours} hours):\n{url}\n\n"
                "If you did not sign up for Berth, ignore this email; nobody can use the account "
                "for keys or teams without this link."
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[user.email],
        )
    )
    return url


def verify(*, token: str, user: User) -> None:
    """Mark ``user``'s address verified if ``token`` was made for it and has not expired."""
    try:
        claims = signing.loads(token, salt=SALT, max_age=settings.EMAIL_VERIFICATION_MAX_AGE)
    except signing.SignatureExpired:
        raise ValidationError("This link has expired. Send yourself a new one.") from None
    except signing.BadSignature:
        raise ValidationError("This link is not valid. Send yourself a new one.") from None
    if claims.get("u") != user.pk or claims.get("e", "").lower() != user.email.lower():
        raise ValidationError(f"This link was sent for another account. You are logged in as {user.email}.")
    mark_verified(user=user)


def mark_verified(*, user: User) -> None:
    User.objects.filter(pk=user.pk).update(email_verified=True)
    user.email_verified = True


def require_verified(user: User) -> None:
    """Raise ``Unverified`` (a ``PermissionDenied``) for an account that has not verified yet."""
    if not user.email_verified:
        raise Unverified(UNVERIFIED.format(email=user.email))


class Unverified(PermissionDenied):
    """The acting account has not verified its email address."""
