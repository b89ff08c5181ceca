"""Key and tenant lookups against the Redis mirror (``tenants/mirror.py``), cached for ≤1 s.

A key reads ``sk-berth-<12 lookup>_<43 secret>``. The lookup id finds ``<prefix>apikey:<id>``;
the secret is checked as HMAC-SHA256(pepper, secret) in constant time. An unknown key, a wrong
secret, a retired pepper and an expired key all spend the same HMAC and fail with the same 401.

Entries (including "absent") are cached in-process for ``key_cache_seconds`` (≤1 s) and dropped
at once when the control plane publishes ``apikey:<id>`` / ``tenant:<id>`` on the invalidation
channel (``route:<model>`` / ``model:<name>`` on it are handed to the router), so a revocation takes effect within a second even if the subscription lags.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

import orjson

from gateway.errors import GatewayError, invalid_api_key, missing_api_key

logger = logging.getLogger("berth.gateway.auth")

KEY_PREFIX = "sk-berth-"
LOOKUP_LENGTH = 12
SECRET_LENGTH = 43
_DUMMY_SECRET = b"x" * SECRET_LENGTH
INVALIDATE_CHANNEL = "invalidate"


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    tenant_id: str
    secret_hash: str
    pepper_id: str
    allowed_models: frozenset[str]
    expires_at: float | None
    limits: dict | None  # optional per-key limits (same shape as a plan), if the mirror has them


@dataclass(frozen=True)
class TenantEntry:
    tenant_id: str
    status: str
    plan: dict
    spend_limit_micros: int | None = None  # gateway/spend.py: None = no spend limit


@dataclass(frozen=True)
class Principal:
    key: KeyEntry
    tenant: TenantEntry


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    raw = headers.get(b"authorization")
    if raw is not None:
        scheme, _, value = raw.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        return None
    raw = headers.get(b"api-key")
    return raw.decode("latin-1").strip() if raw is not None else None


def _spend_limit(value: str | None) -> int | None:
    """The mirrored spend limit; empty means none, and a malformed one is logged and ignored."""
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        logger.warning("ignoring malformed spend_limit_micros %r in the tenant mirror", value)
        return None


def _parse(raw: str) -> tuple[str, str] | None:
    if not raw.startswith(KEY_PREFIX):
        return None
    lookup_id, sep, secret = raw[len(KEY_PREFIX) :].partition("_")
    if not sep or len(lookup_id) != LOOKUP_LENGTH or len(secret) != SECRET_LENGTH:
        return None
    return lookup_id, secret


class Authenticator:
    def __init__(self, redis, settings):
        self.redis = redis
        self.settings = settings
        self.peppers = settings.peppers()
        self._any_pepper = next(iter(self.peppers.values()))
        self.ttl = settings.key_cache_seconds
        self._keys: dict[str, tuple[float, KeyEntry | None]] = {}
        self._tenants: dict[str, tuple[float, TenantEntry | None]] = {}
        # Routing-table and model-registry invalidations share the channel; the router takes them.
        self.on_other = None

    # ------------------------------------------------------------------ cache

    def invalidate(self, message: str) -> None:
        kind, _, ident = message.partition(":")
        if kind == "apikey":
            self._keys.pop(ident, None)
        elif kind == "tenant":
            self._tenants.pop(ident, None)
        elif kind in ("route", "model"):
            if self.on_other is not None:
                self.on_other(kind, ident)
        else:  # unknown message: be safe
            self._keys.clear()
            self._tenants.clear()

    async def listen_invalidations(self) -> None:
        """Drop cached entries as the control plane announces changes (reconnects forever)."""
        channel = self.settings.key(INVALIDATE_CHANNEL)
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
                # Anything may have changed while we were not subscribed.
                self._keys.clear()
                self._tenants.clear()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        data = data.decode()
                    if isinstance(data, str):
                        self.invalidate(data)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("invalidation subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(1)

    async def _key(self, lookup_id: str) -> KeyEntry | None:
        now = time.monotonic()
        cached = self._keys.get(lookup_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        raw = await self.redis.hgetall(self.settings.key("apikey", lookup_id))
        entry = None
        if raw:
            raw = {k.decode(): v.decode() for k, v in raw.items()}
            limits = raw.get("limits")
            entry = KeyEntry(
                key_id=raw.get("key_id", ""),
                tenant_id=raw.get("tenant_id", ""),
                secret_hash=raw.get("hash", ""),
                pepper_id=raw.get("pepper", ""),
                allowed_models=frozenset(orjson.loads(raw.get("allowed_models") or "[]")),
                expires_at=float(raw["expires_at"]) if raw.get("expires_at") else None,
                limits=orjson.loads(limits) if limits else None,
            )
        if len(self._keys) > 100_000:
            self._keys.clear()
        self._keys[lookup_id] = (now, entry)
        return entry

    async def tenant(self, tenant_id: str) -> TenantEntry | None:
        now = time.monotonic()
        cached = self._tenants.get(tenant_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        raw = await self.redis.hgetall(self.settings.key("tenant", tenant_id))
        entry = None
        if raw:
            raw = {k.decode(): v.decode() for k, v in raw.items()}
            entry = TenantEntry(
                tenant_id=tenant_id,
                status=raw.get("status", ""),
                plan=orjson.loads(raw.get("plan") or "{}"),
                spend_limit_micros=_spend_limit(raw.get("spend_limit_micros")),
            )
        if len(self._tenants) > 100_000:
            self._tenants.clear()
        self._tenants[tenant_id] = (now, entry)
        return entry

    # ------------------------------------------------------------------ verification

    def _digest(self, pepper: bytes, secret: bytes) -> str:
        return hmac.new(pepper, secret, hashlib.sha256).hexdigest()

    async def authenticate(self, headers: dict[bytes, bytes]) -> Principal:
        raw = presented_key(headers)
        if not raw:
            raise missing_api_key()
        parsed = _parse(raw)
        if parsed is None:
            self._digest(self._any_pepper, _DUMMY_SECRET)  # same work as a well-formed key
            raise invalid_api_key()
        lookup_id, secret = parsed
        entry = await self._key(lookup_id)
        pepper = self.peppers.get(entry.pepper_id) if entry is not None else None
        digest = self._digest(pepper or self._any_pepper, secret.encode())
        ok = (
            entry is not None
            and pepper is not None
            and hmac.compare_digest(digest, entry.secret_hash)
            and (entry.expires_at is None or entry.expires_at > time.time())
        )
        if not ok:
            raise invalid_api_key()
        tenant = await self.tenant(entry.tenant_id)
        if tenant is None:
            raise invalid_api_key()
        if tenant.status != "active":
            raise GatewayError(
                403,
                "Your organization is suspended. Contact the operator of this Berth deployment.",
                type="permission_error",
                code="organization_suspended",
            )
        return Principal(key=entry, tenant=tenant)
