"""The playground's short-lived API key: minted per session and tenant, reused until near expiry.

The browser calls the gateway directly (so answers stream and are metered like any client's), and
needs a key for that. A one-hour key named "Playground · <email>" is created for the user in the
current tenant; it is an ordinary key: listed on the keys page, revocable, billed like any other.

The session (a database row) never holds the key itself: only its id and a random salt. The
secret is HMAC(SECRET_KEY-derived key, salt), derived again whenever the page asks, so a copy of
the session table alone reveals no usable key. If the derivation no longer matches the stored hash
(SECRET_KEY rotated, or an entry written before this scheme), the key is revoked and replaced.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.crypto import salted_hmac

from console.access import NoTenant, forbidden, tenant_required
from console.pages import models_for
from contract import api_keys
from models_registry.constants import Task
from tenants import keys, verification
from tenants.constants import PERM_USE_KEYS
from tenants.models import ApiKey

SESSION_KEY = "berth_playground_keys"
KEY_LIFETIME = timedelta(hours=1)
# A key this close to expiry is replaced, so a conversation does not fail mid-way.
RENEW_BEFORE = timedelta(minutes=5)


def _derived_secret(salt: str) -> str:
    digest = salted_hmac("berth.console.playground-key", salt, algorithm="sha256").digest()
    return keys.secret_from_bytes(digest)


def _plaintext(api_key: ApiKey, salt: str) -> str | None:
    """The key's full text if ``salt`` still derives its secret, else ``None``."""
    secret = _derived_secret(salt)
    if not keys.secret_matches(secret, pepper_id=api_key.pepper_id, expected_hash=api_key.secret_hash):
        return None
    return api_keys.format_key(kind=api_key.kind, lookup_id=api_key.lookup_id, secret=secret)


def playground_key(request, tenant) -> dict[str, str]:
    """``{"key_id", "key", "expires_at"}`` for ``request.user`` in ``tenant``."""
    now = timezone.now()
    stored = {
        tenant_id: entry
        for tenant_id, entry in (request.session.get(SESSION_KEY) or {}).items()
        if datetime.fromisoformat(entry["expires_at"]) > now
    }
    entry = stored.get(str(tenant.pk))
    current = ApiKey.objects.for_tenant(tenant).usable().filter(pk=entry["key_id"]).first() if entry else None
    if current is not None:
        plaintext = _plaintext(current, entry["salt"]) if entry.get("salt") else None
        if plaintext and datetime.fromisoformat(entry["expires_at"]) - now > RENEW_BEFORE:
            return {**entry, "key": plaintext}
        # Near expiry or no longer derivable: it must not outlive its use in this session.
        keys.revoke_api_key(api_key=current)
    salt = secrets.token_urlsafe(32)
    created = keys.create_api_key(
        tenant=tenant,
        name=f"Playground · {request.user.email}"[:100],
        created_by=request.user,
        expires_at=now + KEY_LIFETIME,
        secret=_derived_secret(salt),
    )
    entry = {
        "key_id": str(created.api_key.pk),
        "salt": salt,
        "expires_at": created.api_key.expires_at.isoformat(),
    }
    stored[str(tenant.pk)] = entry
    request.session[SESSION_KEY] = stored
    return {**entry, "key": created.plaintext}


@tenant_required(
    perm=PERM_USE_KEYS,
    denied="The playground calls the gateway with an API key, and your role cannot use keys.",
)
def playground(request, tenant):
    if not request.user.email_verified:
        return forbidden(request, verification.UNVERIFIED.format(email=request.user.email))
    chat_models = list(models_for(tenant).filter(task=Task.CHAT).values_list("name", flat=True))
    response = render(request, "console/playground.html", {"chat_models": chat_models})
    response["Cache-Control"] = "no-store"
    return response


@tenant_required(
    perm=PERM_USE_KEYS,
    denied="Your role cannot use API keys.",
    if_no_tenant=NoTenant.NOT_FOUND,
    json=True,
    methods=["POST"],
)
def playground_key_view(request, tenant):
    if not request.user.email_verified:
        return forbidden(request, verification.UNVERIFIED.format(email=request.user.email), json=True)
    entry = playground_key(request, tenant)
    response = JsonResponse(
        {"key": entry["key"], "expires_at": entry["expires_at"], "gateway_url": settings.GATEWAY_PUBLIC_URL}
    )
    response["Cache-Control"] = "no-store"
    return response
