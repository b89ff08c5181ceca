"""Billing emails: who receives them and how they are sent (Django's mail backend)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail

from billing.models import BillingAccount
from tenants.constants import Role
from tenants.models import Membership

log = logging.getLogger("berth.billing")


def recipients(tenant) -> list[str]:
    """Owners and billing members of ``tenant``, plus its billing email; no duplicates."""
    emails = list(
        Membership.objects.filter(tenant=tenant, role__in=[Role.OWNER, Role.BILLING])
        .order_by("created_at")
        .values_list("user__email", flat=True)
    )
    account = BillingAccount.objects.filter(tenant=tenant).first()
    if account is not None and account.billing_email:
        emails.append(account.billing_email)
    seen: dict[str, None] = {}
    for email in emails:
        if email:
            seen.setdefault(email.lower(), None)
    return list(seen)


def send(tenant, subject: str, body: str) -> int:
    to = recipients(tenant)
    if not to:
        log.warning("no billing recipients for %s: %s", tenant.slug, subject)
        return 0
    return send_mail(f"[Berth] {subject}", body, settings.DEFAULT_FROM_EMAIL, to)
