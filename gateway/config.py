"""The gateway's settings: one pydantic-settings class reading the control plane's variable names.

The gateway is its own program (``python -m gateway``) and never imports Django, so it cannot
read ``berth/settings.py``; it reads the same environment instead (``REDIS_URL``,
``BERTH_KEY_PEPPERS``, ``BERTH_REDIS_PREFIX``, ``BERTH_INTERNAL_TOKEN``) plus its own
``BERTH_GATEWAY_*`` knobs, and nothing else: no database, no Django secret, no Stripe key. On a
development machine ``berth up`` hands it what the control plane resolved (the embedded Redis URL,
the generated dev peppers: ``berth.roles.control_plane_env``).

``DEBUG`` follows the control plane's rule (on when no ``DATABASE_URL`` names a database, as in
development with the embedded servers; the shipped compose file and Kubernetes config set it to
``0``). With it off the gateway refuses to start without ``BERTH_INTERNAL_TOKEN``, which guards
its ``/metrics`` (engine addresses, other tenants' model names and traffic).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.api_keys import parse_peppers
from contract.redis_names import normalize_prefix


class GatewaySettings(BaseSettings):
    # hide_input_in_errors: a start-up error must not print the environment (peppers, tokens).
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, hide_input_in_errors=True)

    # The server (``python -m gateway`` takes them as defaults of --host, --port, --grace-seconds).
    host: str = Field("127.0.0.1", validation_alias="BERTH_GATEWAY_HOST")
    port: int = Field(8001, validation_alias="BERTH_GATEWAY_PORT", ge=1, le=65535)
    # On SIGTERM the gateway stops accepting and lets in-flight requests finish for this long; what
    # is cut after it is billed as delivered (status gateway_stopped).
    grace_seconds: int = Field(30, validation_alias="BERTH_GATEWAY_GRACE_SECONDS", ge=0)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    key_peppers: str = Field("", validation_alias="BERTH_KEY_PEPPERS")
    key_peppers_file: str | None = Field(None, validation_alias="BERTH_KEY_PEPPERS_FILE")
    redis_prefix: str = Field("berth:", validation_alias="BERTH_REDIS_PREFIX")
    redis_max_connections: int = Field(128, validation_alias="BERTH_GATEWAY_REDIS_CONNECTIONS", ge=4)

    # DEBUG as the control plane reads it: unset means on only without a DATABASE_URL.
    debug_raw: str | None = Field(None, validation_alias="DEBUG")
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    # Bearer token for /metrics (the same variable guards the web's /internal/*).
    internal_token: str = Field("", validation_alias="BERTH_INTERNAL_TOKEN")
    internal_token_file: str | None = Field(None, validation_alias="BERTH_INTERNAL_TOKEN_FILE")
    # The spend counter's period (contract/spend.py), as billing closes invoices.
    billing_period: Literal["month", "week", "day"] = Field("month", validation_alias="BERTH_BILLING_PERIOD")

    # Prefix-cache isolation: the salt sent to engines as `cache_salt` is an HMAC of the tenant id
    # under this secret (default: derived from the key peppers). Tenants that may share cached
    # prefixes: `<tenant id>=<group>` pairs, comma-separated; a group's tenants share one salt.
    cache_salt_secret: str = Field("", validation_alias="BERTH_GATEWAY_CACHE_SALT_SECRET")
    cache_salt_groups: str = Field("", validation_alias="BERTH_GATEWAY_CACHE_SALT_GROUPS")

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
    # LoRA adapters (gateway.adapters): prefer workers holding the adapter, or plain least load.
    lora_routing: Literal["affinity", "least_load"] = Field(
        "affinity", validation_alias="BERTH_GATEWAY_LORA_ROUTING"
    )
    lora_load_timeout: float = Field(120.0, validation_alias="BERTH_GATEWAY_LORA_LOAD_TIMEOUT", gt=0)
    route_cache_seconds: float = Field(1.0, validation_alias="BERTH_GATEWAY_ROUTE_CACHE_SECONDS", ge=0)
    cold_start_timeout: float = Field(300.0, validation_alias="BERTH_GATEWAY_COLD_START_TIMEOUT", gt=0)

    # The admission queue (gateway/admission.py): requests wait in the gateway while a model's
    # engines are saturated, served by tier band then weighted fair share. 0 = off (FCFS).
    admission: bool = Field(True, validation_alias="BERTH_GATEWAY_ADMISSION")
    # Requests admitted at once per ready worker: the engines' --max-num-seqs.
    admit_per_worker: int = Field(256, validation_alias="BERTH_GATEWAY_ADMIT_PER_WORKER", ge=1)
    # Longest wait in the queue for priority/default requests, and for flex/batch ones.
    admit_max_wait: float = Field(30.0, validation_alias="BERTH_GATEWAY_ADMIT_MAX_WAIT", gt=0)
    admit_max_wait_background: float = Field(
        300.0, validation_alias="BERTH_GATEWAY_ADMIT_MAX_WAIT_BACKGROUND", gt=0
    )
    # Slots per worker beyond the capacity that only priority-tier requests may take: engines run
    # with --scheduling-policy priority and make room for them at once (preempting lower tiers),
    # so interactive priority traffic does not wait for a flood's requests to finish.
    admit_priority_headroom: int = Field(2, validation_alias="BERTH_GATEWAY_ADMIT_PRIORITY_HEADROOM", ge=0)
    # Share of a model's capacity batch lines leave free for interactive requests (gateway/admission.py).
    admit_batch_reserve: float = Field(0.5, validation_alias="BERTH_GATEWAY_ADMIT_BATCH_RESERVE", ge=0, lt=1)
    # Waiting requests per model and band; more are refused at once.
    admit_queue_max: int = Field(10_000, validation_alias="BERTH_GATEWAY_ADMIT_QUEUE_MAX", ge=1)
    # A waiting request asks Redis this often when no grant message came.
    admit_poll_seconds: float = Field(0.5, validation_alias="BERTH_GATEWAY_ADMIT_POLL_SECONDS", gt=0)
    # Gateways heartbeat their slots this often; one silent for admit_gateway_ttl is dead (its
    # slots and waiting requests are dropped).
    admit_heartbeat_seconds: float = Field(
        0.5, validation_alias="BERTH_GATEWAY_ADMIT_HEARTBEAT_SECONDS", gt=0
    )
    admit_gateway_ttl: float = Field(3.0, validation_alias="BERTH_GATEWAY_ADMIT_GATEWAY_TTL", gt=0)

    # Upstream
    connect_timeout: float = Field(5.0, validation_alias="BERTH_GATEWAY_CONNECT_TIMEOUT", gt=0)
    read_timeout: float = Field(600.0, validation_alias="BERTH_GATEWAY_READ_TIMEOUT", gt=0)
    max_connections: int = Field(4096, validation_alias="BERTH_GATEWAY_MAX_CONNECTIONS", ge=1)
    # The engine's /tokenize, asked for the prompt of a request dropped before the engine reported
    # usage, and to count an answer that came without usage.
    tokenize_timeout: float = Field(2.0, validation_alias="BERTH_GATEWAY_TOKENIZE_TIMEOUT", gt=0)
    # How long a /v1/responses answer stays retrievable through this gateway (response id → worker
    # and tenant in Redis). The engine keeps stored responses in its memory, so this is an upper
    # bound: a restarted worker has forgotten them.
    response_ttl_seconds: int = Field(7 * 86400, validation_alias="BERTH_GATEWAY_RESPONSE_TTL_SECONDS", ge=60)

    # Usage checkpoints of long streams (gateway/metering.py): a SIGKILLed gateway loses at most
    # the tokens delivered since the last one (the consumer bills that checkpoint).
    checkpoint_seconds: float = Field(5.0, validation_alias="BERTH_GATEWAY_CHECKPOINT_SECONDS", gt=0)
    checkpoint_tokens: int = Field(200, validation_alias="BERTH_GATEWAY_CHECKPOINT_TOKENS", ge=1)
    # A checkpoint not refreshed for this long belongs to a dead gateway and is billed.
    checkpoint_lost_after: float = Field(60.0, validation_alias="BERTH_GATEWAY_CHECKPOINT_LOST_AFTER", gt=0)
    # How long a finished request's usage event waits for an unreachable Redis (a restart) before
    # the request fails: the engine has done the work, so it is held rather than lost.
    record_retry_seconds: float = Field(15.0, validation_alias="BERTH_GATEWAY_RECORD_RETRY_SECONDS", ge=0)

    # The control plane's web role: /v1/files and /v1/batches are forwarded to its /internal/v1/
    # views (gateway/control_plane.py) with the internal token.
    control_plane_url: str = Field(
        "http://127.0.0.1:8000", validation_alias="BERTH_GATEWAY_CONTROL_PLANE_URL"
    )
    # The control plane's upload limit, read from the same variable: a body announced larger is
    # refused here (413) instead of being spooled to the web role's disk first.
    files_max_bytes: int = Field(200 * 1024 * 1024, validation_alias="BERTH_FILES_MAX_BYTES", ge=1)

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
        return normalize_prefix(value)

    @model_validator(mode="after")
    def _peppers_from_file(self) -> GatewaySettings:
        if not self.key_peppers and self.key_peppers_file:
            self.key_peppers = Path(self.key_peppers_file).read_text().strip()
        self.peppers()  # validate at start-up
        if not self.internal_token and self.internal_token_file:
            self.internal_token = Path(self.internal_token_file).read_text().strip()
        if not self.debug and len(self.internal_token) < 32:
            raise ValueError(
                "BERTH_INTERNAL_TOKEN (or BERTH_INTERNAL_TOKEN_FILE) must be set, at least 32 random "
                "characters, when DEBUG is off: it guards the gateway's /metrics"
            )
        self.cache_salt_group_map()  # validate at start-up
        return self

    @property
    def debug(self) -> bool:
        if self.debug_raw is None:
            return not self.database_url
        value = self.debug_raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"DEBUG must be one of 1/0, true/false, yes/no, on/off; got {self.debug_raw!r}")

    def cache_salt_group_map(self) -> dict[str, str]:
        """``{tenant id: group}`` from ``BERTH_GATEWAY_CACHE_SALT_GROUPS``."""
        result: dict[str, str] = {}
        for pair in self.cache_salt_groups.split(","):
            tenant, sep, group = pair.strip().partition("=")
            if tenant.strip() and sep and group.strip():
                result[tenant.strip()] = group.strip()
            elif pair.strip():
                raise ValueError("BERTH_GATEWAY_CACHE_SALT_GROUPS must look like 'tenant-id=group,…'")
        return result

    def cache_salt_key(self) -> bytes:
        """The HMAC key for tenants' cache salts: the setting, else derived from the peppers."""
        if self.cache_salt_secret:
            return self.cache_salt_secret.encode()
        material = "\n".join(f"{pid}:{secret.decode()}" for pid, secret in sorted(self.peppers().items()))
        return hmac.new(material.encode(), b"berth cache salt", hashlib.sha256).digest()

    def peppers(self) -> dict[str, bytes]:
        """``{pepper id: secret}``, validated as the control plane does (``contract.api_keys``)."""
        parsed = parse_peppers(self.key_peppers, require_strong=not self.debug)
        return {pid: secret.encode() for pid, secret in parsed.items()}

    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()  # type: ignore[call-arg]
