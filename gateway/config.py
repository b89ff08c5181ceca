"""The gateway's settings: one pydantic-settings class reading the control plane's variable names.

The gateway never imports Django, so it cannot read ``berth/settings.py``; it reads the same
environment instead (``REDIS_URL``, ``BERTH_KEY_PEPPERS``, ``BERTH_REDIS_PREFIX``) plus its own
``BERTH_GATEWAY_*`` knobs. ``manage.py gateway`` resolves the embedded Redis URL and the dev
peppers and passes them on in the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    key_peppers: str = Field("", validation_alias="BERTH_KEY_PEPPERS")
    key_peppers_file: str | None = Field(None, validation_alias="BERTH_KEY_PEPPERS_FILE")
    redis_prefix: str = Field("berth:", validation_alias="BERTH_REDIS_PREFIX")
    redis_max_connections: int = Field(128, validation_alias="BERTH_GATEWAY_REDIS_CONNECTIONS", ge=4)

    # Requests
    max_body_bytes: int = Field(8 * 1024 * 1024, validation_alias="BERTH_GATEWAY_MAX_BODY_BYTES", ge=1024)
    max_tokens_limit: int = Field(1_000_000, validation_alias="BERTH_GATEWAY_MAX_TOKENS_LIMIT", ge=1)
    # Reserved against tokens/minute and the monthly budget when a request names no max_tokens.
    default_max_tokens_reserve: int = Field(1024, validation_alias="BERTH_GATEWAY_DEFAULT_MAX_TOKENS", ge=1)

    # Auth caches: a revoked key stops working within this many seconds (at most 1).
    key_cache_seconds: float = Field(1.0, validation_alias="BERTH_GATEWAY_KEY_CACHE_SECONDS", ge=0, le=1)

    # How often this gateway hands key last-use times to Redis (a Celery task takes them on).
    last_used_flush_seconds: float = Field(
        5.0, validation_alias="BERTH_GATEWAY_LAST_USED_FLUSH_SECONDS", gt=0
    )

    # Quotas
    lease_seconds: int = Field(90, validation_alias="BERTH_GATEWAY_LEASE_SECONDS", ge=5)

    # Routing
    routing: Literal["least_load", "prefix", "round_robin"] = Field(
        "prefix", validation_alias="BERTH_GATEWAY_ROUTING"
    )
    prefix_chars: int = Field(512, validation_alias="BERTH_GATEWAY_PREFIX_CHARS", ge=16)
    # Bounded load: the preferred worker is skipped when its load exceeds (1 + eps) × mean + 1.
    bounded_load_eps: float = Field(0.25, validation_alias="BERTH_GATEWAY_BOUNDED_LOAD_EPS", ge=0)
    scrape_interval: float = Field(1.0, validation_alias="BERTH_GATEWAY_SCRAPE_INTERVAL", gt=0)
    route_cache_seconds: float = Field(1.0, validation_alias="BERTH_GATEWAY_ROUTE_CACHE_SECONDS", ge=0)
    cold_start_timeout: float = Field(300.0, validation_alias="BERTH_GATEWAY_COLD_START_TIMEOUT", gt=0)

    # Upstream
    upstream_client: Literal["aiohttp", "httpx"] = Field(
        "aiohttp", validation_alias="BERTH_GATEWAY_UPSTREAM_CLIENT"
    )
    connect_timeout: float = Field(5.0, validation_alias="BERTH_GATEWAY_CONNECT_TIMEOUT", gt=0)
    read_timeout: float = Field(600.0, validation_alias="BERTH_GATEWAY_READ_TIMEOUT", gt=0)
    max_connections: int = Field(4096, validation_alias="BERTH_GATEWAY_MAX_CONNECTIONS", ge=1)
    # The engine's /tokenize, asked for the prompt of a request dropped before the engine reported
    # usage, and to count an answer that came without usage.
    tokenize_timeout: float = Field(2.0, validation_alias="BERTH_GATEWAY_TOKENIZE_TIMEOUT", gt=0)

    # Usage checkpoints of long streams (gateway/metering.py): a SIGKILLed gateway loses at most
    # the tokens delivered since the last one (the consumer bills that checkpoint).
    checkpoint_seconds: float = Field(5.0, validation_alias="BERTH_GATEWAY_CHECKPOINT_SECONDS", gt=0)
    checkpoint_tokens: int = Field(200, validation_alias="BERTH_GATEWAY_CHECKPOINT_TOKENS", ge=1)
    # A checkpoint not refreshed for this long belongs to a dead gateway and is billed.
    checkpoint_lost_after: float = Field(60.0, validation_alias="BERTH_GATEWAY_CHECKPOINT_LOST_AFTER", gt=0)
    # How long a finished request's usage event waits for an unreachable Redis (a restart) before
    # the request fails: the engine has done the work, so it is held rather than lost.
    record_retry_seconds: float = Field(15.0, validation_alias="BERTH_GATEWAY_RECORD_RETRY_SECONDS", ge=0)

    # Browsers calling the gateway from another origin (the console's playground): comma-separated
    # origins, or "*" for any. Empty: no CORS headers at all.
    cors_origins: str = Field(
        "http://127.0.0.1:8000,http://localhost:8000", validation_alias="BERTH_GATEWAY_CORS_ORIGINS"
    )

    # Logs
    access_log: bool = Field(True, validation_alias="BERTH_GATEWAY_ACCESS_LOG")
    log_content: bool = Field(False, validation_alias="BERTH_GATEWAY_LOG_CONTENT")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value or "berth:"

    @model_validator(mode="after")
    def _peppers_from_file(self) -> GatewaySettings:
        if not self.key_peppers and self.key_peppers_file:
            self.key_peppers = Path(self.key_peppers_file).read_text().strip()
        self.peppers()  # validate at start-up
        return self

    def peppers(self) -> dict[str, bytes]:
        """``{pepper id: secret}``; a gateway with no peppers could not verify any key."""
        result: dict[str, bytes] = {}
        for pair in self.key_peppers.split(","):
            pid, _, secret = pair.strip().partition(":")
            if pid and secret:
                result[pid] = secret.encode()
            elif pair.strip():
                raise ValueError("BERTH_KEY_PEPPERS must look like 'id1:secret1,id2:secret2'")
        if not result:
            raise ValueError("BERTH_KEY_PEPPERS (or BERTH_KEY_PEPPERS_FILE) must be set for the gateway")
        return result

    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    def key(self, *parts: object) -> str:
        """A namespaced Redis key, as ``berth.redis.rkey`` builds it on the control plane."""
        return self.redis_prefix + ":".join(str(part) for part in parts)


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()  # type: ignore[call-arg]
