"""API keys on the control plane: creation, revocation, and verification against PostgreSQL.

The key format, the HMAC and the peppers are the contract's (``contract.api_keys``); the gateway
verifies inference keys against the Redis mirror with the same functions. Unknown keys and wrong
secrets fail identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit import trail
from contract import api_keys
from tenants import mirror
from tenants.constants import KeyKind
from tenants.models import ApiKey, Tenant, User

LAST_USED_GRANULARITY = timedelta(minutes=1)


class InvalidKey(Exception):
    """The presented key is malformed, unknown, revoked, expired, or its secret is wrong."""


@dataclass(frozen=True)
class CreatedKey:
    """A freshly created key. ``plaintext`` exists only here: it is never stored."""

    api_key: ApiKey
    plaintext: str


secret_from_bytes = api_keys.secret_from_bytes


def hash_secret(secret: str, pepper_id: str | None = None) -> tuple[str, str]:
    """Return ``(pepper_id, hex digest)`` of HMAC-SHA256(pepper, secret)."""
    pepper_id = pepper_id or settings.CURRENT_PEPPER_ID
    return pepper_id, api_keys.secret_digest(settings.KEY_PEPPERS[pepper_id], secret)


def parse_key(raw: str) -> api_keys.ParsedKey:
    parsed = api_keys.parse_key(raw)
    if parsed is None:
        raise InvalidKey("malformed key")
    return parsed


def secret_matches(secret: str, *, pepper_id: str, expected_hash: str) -> bool:
    if pepper_id not in settings.KEY_PEPPERS:
        # Still spend the HMAC so timing does not tell a retired pepper from a wrong secret.
        hash_secret(secret)
        return False
    _, digest = hash_secret(secret, pepper_id)
    return api_keys.digest_matches(digest, expected_hash)


def create_api_key(
    *,
    tenant: Tenant,
    name: str,
    created_by: User | None = None,
    kind: str = KeyKind.INFERENCE,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    secret: str | None = None,
) -> CreatedKey:
    """Create a key; the plaintext is returned once and mirrored to Redis after commit.

    ``secret`` is random unless given (from ``secret_from_bytes``, by callers that re-derive it).
    """
    if secret is None:
        secret = api_keys.random_base62(api_keys.SECRET_LENGTH)
    elif not api_keys.is_well_formed_secret(secret):
        raise ValueError("malformed key secret")
    pepper_id, digest = hash_secret(secret)
    with transaction.atomic():
        while True:
            lookup_id = api_keys.random_base62(api_keys.LOOKUP_LENGTH)
            if not ApiKey.objects.filter(lookup_id=lookup_id).exists():
                break
        api_key = ApiKey(
            tenant=tenant,
            kind=kind,
            name=name,
            lookup_id=lookup_id,
            secret_hash=digest,
            pepper_id=pepper_id,
            created_by=created_by,
            allowed_models=list(allowed_models or []),
            expires_at=expires_at,
        )
        api_key.full_clean()
        api_key.save()
        trail.record(
            action="api_key.created",
            tenant=tenant,
            actor=created_by,
            target=api_key,
            summary=f"{api_key.get_kind_display()} key {api_key.name!r} ({api_key.display_prefix}…) created",
            after=trail.fields(api_key, ("name", "kind", "allowed_models", "expires_at")),
        )
        transaction.on_commit(lambda: mirror.publish_key(api_key))
    return CreatedKey(
        api_key=api_key, plaintext=api_keys.format_key(kind=str(kind), lookup_id=lookup_id, secret=secret)
    )


def revoke_api_key(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key (idempotent). The Redis mirror entry is deleted right after commit."""
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
            trail.record(
                action="api_key.revoked",
                tenant=locked.tenant,
                target=locked,
                summary=f"key {locked.name!r} ({locked.display_prefix}…) revoked",
                before={"revoked_at": None},
                after={"revoked_at": locked.revoked_at},
            )
        transaction.on_commit(lambda: mirror.unpublish_key(locked.lookup_id))
    api_key.revoked_at = locked.revoked_at
    return locked


def update_api_key(*, api_key: ApiKey) -> ApiKey:
    """Save an edited key (name, allowed models, expiry) and republish it after commit."""
    with transaction.atomic():
        before, after = trail.diff(api_key, exclude=("last_used_at",))
        api_key.save()
        if after:
            trail.record(
                action="api_key.updated",
                tenant=api_key.tenant,
                target=api_key,
                summary=f"key {api_key.name!r} ({api_key.display_prefix}…) changed",
                before=before,
                after=after,
            )
        transaction.on_commit(lambda: mirror.publish_key(api_key))
    return api_key


def authenticate_key(raw: str, *, kind: str) -> ApiKey:
    """Resolve a presented key against PostgreSQL (control plane only; the gateway uses Redis)."""
    try:
        parsed = parse_key(raw)
    except InvalidKey:
        hash_secret(api_keys.DUMMY_SECRET)  # same work as a well-formed key
        raise
    api_key = ApiKey.objects.select_related("tenant", "created_by").filter(lookup_id=parsed.lookup_id).first()
    if api_key is None:
        hash_secret(parsed.secret)
        raise InvalidKey("unknown key")
    ok = secret_matches(parsed.secret, pepper_id=api_key.pepper_id, expected_hash=api_key.secret_hash)
    if not ok or api_key.kind != kind or parsed.kind != api_key.kind or not api_key.is_usable:
        raise InvalidKey("invalid key")
    touch_last_used(api_key)
    return api_key


def touch_last_used(api_key: ApiKey, when: datetime | None = None) -> None:
    """Write ``last_used_at`` at most once per minute per key (a conditional UPDATE)."""
    when = when or timezone.now()
    if api_key.last_used_at and when - api_key.last_used_at < LAST_USED_GRANULARITY:
        return
    ApiKey.objects.filter(pk=api_key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=when - LAST_USED_GRANULARITY)
    ).update(last_used_at=when)
    api_key.last_used_at = when
