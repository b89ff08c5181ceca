"""API keys: generation, hashing, verification, creation and revocation.

A key reads ``sk-berth-<lookup id>_<secret>`` (``mk-berth-`` for management keys). The lookup id
is stored in clear to find the row (or its Redis mirror); the secret is stored only as
HMAC-SHA256(pepper, secret) with the pepper's id, so peppers can be rotated and a database leak
alone does not reveal usable keys. Unknown keys and wrong secrets fail identically.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tenants import mirror
from tenants.constants import KEY_LOOKUP_LENGTH, KEY_PREFIX, KeyKind
from tenants.models import ApiKey, Tenant, User

_ALPHABET = string.ascii_letters + string.digits
# 43 base62 characters ≈ 256 bits of entropy.
_SECRET_LENGTH = 43
LAST_USED_GRANULARITY = timedelta(minutes=1)


class InvalidKey(Exception):
    """The presented key is malformed, unknown, revoked, expired, or its secret is wrong."""


@dataclass(frozen=True)
class ParsedKey:
    kind: str
    lookup_id: str
    secret: str


@dataclass(frozen=True)
class CreatedKey:
    """A freshly created key. ``plaintext`` exists only here: it is never stored."""

    api_key: ApiKey
    plaintext: str


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def secret_from_bytes(material: bytes) -> str:
    """A well-formed key secret from ≥32 bytes of pseudo-random material (e.g. an HMAC digest).

    For callers that must re-derive a key's secret instead of storing it (the playground).
    """
    if len(material) < 32:
        raise ValueError("need at least 32 bytes of key material")
    number = int.from_bytes(material[:32], "big")
    digits = []
    for _ in range(_SECRET_LENGTH):
        number, digit = divmod(number, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    return "".join(digits)


def hash_secret(secret: str, pepper_id: str | None = None) -> tuple[str, str]:
    """Return ``(pepper_id, hex digest)`` of HMAC-SHA256(pepper, secret)."""
    pepper_id = pepper_id or settings.CURRENT_PEPPER_ID
    pepper = settings.KEY_PEPPERS[pepper_id]
    digest = hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()
    return pepper_id, digest


def parse_key(raw: str) -> ParsedKey:
    raw = (raw or "").strip()
    for kind, prefix in KEY_PREFIX.items():
        if raw.startswith(prefix):
            lookup_id, sep, secret = raw[len(prefix) :].partition("_")
            if sep and len(lookup_id) == KEY_LOOKUP_LENGTH and len(secret) == _SECRET_LENGTH:
                return ParsedKey(kind=str(kind), lookup_id=lookup_id, secret=secret)
            break
    raise InvalidKey("malformed key")


def secret_matches(secret: str, *, pepper_id: str, expected_hash: str) -> bool:
    if pepper_id not in settings.KEY_PEPPERS:
        # Still spend the HMAC so timing does not tell a retired pepper from a wrong secret.
        hash_secret(secret)
        return False
    _, digest = hash_secret(secret, pepper_id)
    return hmac.compare_digest(digest, expected_hash)


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
        secret = _random_base62(_SECRET_LENGTH)
    elif len(secret) != _SECRET_LENGTH or not set(secret) <= set(_ALPHABET):
        raise ValueError("malformed key secret")
    pepper_id, digest = hash_secret(secret)
    with transaction.atomic():
        while True:
            lookup_id = _random_base62(KEY_LOOKUP_LENGTH)
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
        transaction.on_commit(lambda: mirror.publish_key(api_key))
    return CreatedKey(api_key=api_key, plaintext=f"{KEY_PREFIX[KeyKind(kind)]}{lookup_id}_{secret}")


def revoke_api_key(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key (idempotent). The Redis mirror entry is deleted right after commit."""
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
        transaction.on_commit(lambda: mirror.unpublish_key(locked.lookup_id))
    api_key.revoked_at = locked.revoked_at
    return locked


def authenticate_key(raw: str, *, kind: str) -> ApiKey:
    """Resolve a presented key against PostgreSQL (control plane only; the gateway uses Redis)."""
    try:
        parsed = parse_key(raw)
    except InvalidKey:
        hash_secret("x" * _SECRET_LENGTH)  # same work as a well-formed key
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
