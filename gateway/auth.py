"""Key and tenant lookups against the Redis mirror, cached for ≤1 s; the key check itself.

The key format, the HMAC and the mirror's layout are the contract's (``contract.api_keys``,
``contract`` for the layout). An unknown key, a wrong secret, a retired pepper and an expired key
all spend the same HMAC and fail with the same 401. Cached entries (including "absent") are
dropped at once when the control plane announces a change on the invalidation channel
(``contract.invalidation``), so a revocation takes effect within a second even if the
subscription lags; model and route messages on it are handed to the router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from contract import api_keys, invalidation
from contract.invalidation import Invalidation, Kind
from contract.redis_names import RedisNames
from gateway.cache import TtlCache
from gateway.errors import GatewayError, invalid_api_key, missing_api_key

logger = logging.getLogger("berth.gateway.auth")


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    tenant_id: str
    secret_hash: str
    pepper_id: str
    allowed_models: frozenset[str]
    expires_at: float | None


@dataclass(frozen=True)
class TenantEntry:
    tenant_id: str
    status: str
    plan: dict
    spend_limit_micros: int | None = None  # contract.spend: None = no spend limit


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
    if raw is None:
        raw = headers.get(b"x-api-key")  # Anthropic's header (the anthropic SDK sends only this)
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
    """Lookup id and secret of an inference key (a management key is no key for the gateway)."""
    parsed = api_keys.parse_key(raw)
    if parsed is None or parsed.kind != api_keys.INFERENCE:
        return None
    return parsed.lookup_id, parsed.secret


class Authenticator:
    def __init__(self, redis: Any, settings: Any) -> None:
        self.redis = redis
        self.settings = settings
        self.names = RedisNames(settings.redis_prefix)
        self.peppers = settings.peppers()
        self._any_pepper = next(iter(self.peppers.values()))
        self.ttl = settings.key_cache_seconds
        self._keys: TtlCache[str, KeyEntry | None] = TtlCache(self.ttl, max_entries=100_000)
        self._tenants: TtlCache[str, TenantEntry | None] = TtlCache(self.ttl, max_entries=100_000)
        # Routing-table and model-registry invalidations share the channel; the router takes them.
        self.on_other: Callable[[str, str], None] | None = None

    # ------------------------------------------------------------------ cache

    def invalidate(self, message: str | bytes) -> None:
        parsed = invalidation.parse(message)
        if not isinstance(parsed, Invalidation):  # unknown message: be safe
            self._keys.clear()
            self._tenants.clear()
        elif parsed.kind is Kind.API_KEY:
            self._keys.pop(parsed.ident)
        elif parsed.kind is Kind.TENANT:
            self._tenants.pop(parsed.ident)
        elif self.on_other is not None:  # a model or a route
            self.on_other(parsed.kind.value, parsed.ident)

    async def listen_invalidations(self) -> None:
        """Drop cached entries as the control plane announces changes (reconnects forever)."""
        channel = self.names.invalidate_channel()
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
                # Anything may have changed while we were not subscribed.
                self._keys.clear()
                self._tenants.clear()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes | str):
                        self.invalidate(data)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("invalidation subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(1)

    async def _key(self, lookup_id: str) -> KeyEntry | None:
        return await self._keys.get(lookup_id, lambda: self._read_key(lookup_id))

    async def _read_key(self, lookup_id: str) -> KeyEntry | None:
        raw = await self.redis.hgetall(self.names.api_key(lookup_id))
        if not raw:
            return None
        raw = {k.decode(): v.decode() for k, v in raw.items()}
        return KeyEntry(
            key_id=raw.get("key_id", ""),
            tenant_id=raw.get("tenant_id", ""),
            secret_hash=raw.get("hash", ""),
            pepper_id=raw.get("pepper", ""),
            allowed_models=frozenset(orjson.loads(raw.get("allowed_models") or "[]")),
            expires_at=float(raw["expires_at"]) if raw.get("expires_at") else None,
        )

    async def tenant(self, tenant_id: str) -> TenantEntry | None:
        return await self._tenants.get(tenant_id, lambda: self._read_tenant(tenant_id))

    async def _read_tenant(self, tenant_id: str) -> TenantEntry | None:
        raw = await self.redis.hgetall(self.names.tenant(tenant_id))
        if not raw:
            return None
        raw = {k.decode(): v.decode() for k, v in raw.items()}
        return TenantEntry(
            tenant_id=tenant_id,
            status=raw.get("status", ""),
            plan=orjson.loads(raw.get("plan") or "{}"),
            spend_limit_micros=_spend_limit(raw.get("spend_limit_micros")),
        )

    # ------------------------------------------------------------------ verification

    def _digest(self, pepper: bytes, secret: str) -> str:
        return api_keys.secret_digest(pepper, secret)

    async def authenticate(self, headers: dict[bytes, bytes]) -> Principal:
        raw = presented_key(headers)
        if not raw:
            raise missing_api_key()
        parsed = _parse(raw)
        if parsed is None:
            self._digest(self._any_pepper, api_keys.DUMMY_SECRET)  # same work as a well-formed key
            raise invalid_api_key()
        lookup_id, secret = parsed
        entry = await self._key(lookup_id)
        pepper = self.peppers.get(entry.pepper_id) if entry is not None else None
        digest = self._digest(pepper or self._any_pepper, secret)
        ok = (
            entry is not None
            and pepper is not None
            and api_keys.digest_matches(digest, entry.secret_hash)
            and (entry.expires_at is None or entry.expires_at > time.time())
        )
        if not ok or entry is None:
            raise invalid_api_key()
        return Principal(key=entry, tenant=await self.active_tenant(entry.tenant_id))

    async def active_tenant(self, tenant_id: str) -> TenantEntry:
        """The tenant a request is for: unknown is the same 401 as a bad key, suspended a 403."""
        tenant = await self.tenant(tenant_id)
        if tenant is None:
            raise invalid_api_key()
        if tenant.status != "active":
            raise GatewayError(
                403,
                "Your organization is suspended. Contact the operator of this Berth deployment.",
                type="permission_error",
                code="organization_suspended",
            )
        return tenant
