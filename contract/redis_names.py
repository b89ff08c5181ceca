"""One builder per Redis key, channel and stream (the layout is described in ``contract``).

Each process knows its prefix (``BERTH_REDIS_PREFIX``) from its own settings, so the names are
built by a small value object holding it: ``RedisNames("berth:").api_key("AbC…")``. Nothing else
in Berth spells a Redis name.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "berth:"

# Stream consumer group of the usage consumers (billing.usage).
USAGE_GROUP = "billing"
# Stream consumer group of the control plane's audit-event consumer (audit.gateway_events).
AUDIT_GROUP = "audit"


def normalize_prefix(value: str | None) -> str:
    """``BERTH_REDIS_PREFIX`` as both sides read it: unset or empty means ``berth:``."""
    return value or DEFAULT_PREFIX


def join(prefix: str, *parts: object) -> str:
    """``prefix`` + the parts joined by ``:`` (for names outside the contract, e.g. caches)."""
    return prefix + ":".join(str(part) for part in parts)


@dataclass(frozen=True)
class RedisNames:
    """The names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def _name(self, *parts: object) -> str:
        return join(self.prefix, *parts)

    # ------------------------------------------------------------ mirrors of PostgreSQL

    def api_key(self, lookup_id: str) -> str:
        return self._name("apikey", lookup_id)

    def api_key_pattern(self) -> str:
        return self._name("apikey", "*")

    def lookup_id_of(self, name: str) -> str:
        """The lookup id in an ``apikey:<lookup id>`` name (from a SCAN)."""
        return name[len(self._name("apikey", "")) :]

    def tenant(self, tenant_id: object) -> str:
        return self._name("tenant", tenant_id)

    def tenant_pattern(self) -> str:
        return self._name("tenant", "*")

    def tenant_id_of(self, name: str) -> str:
        """The tenant id in a ``tenant:<id>`` name (from a SCAN)."""
        return name[len(self._name("tenant", "")) :]

    def model(self, name: str) -> str:
        return self._name("model", name)

    def models(self) -> str:
        return self._name("models")

    def route(self, model: str) -> str:
        return self._name("route", model)

    def route_pattern(self) -> str:
        return self._name("route", "*")

    def route_model_of(self, name: str) -> str:
        """The model name in a ``route:<model>`` name (from a SCAN)."""
        return name[len(self._name("route", "")) :]

    def routes(self) -> str:
        return self._name("routes")

    def guardrails(self, tenant_id: object) -> str:
        return self._name("guardrails", tenant_id)

    def guardrails_pattern(self) -> str:
        return self._name("guardrails", "*")

    def guardrails_tenant_of(self, name: str) -> str:
        """The tenant id in a ``guardrails:<tenant id>`` name (from a SCAN)."""
        return name[len(self._name("guardrails", "")) :]

    def invalidate_channel(self) -> str:
        return self._name("invalidate")

    # ------------------------------------------------------------ written by the gateway

    def engine_load(self) -> str:
        return self._name("engine_load")

    def engine_scraper_lock(self) -> str:
        return self._name("lock", "engine_scraper")

    def demand(self, model: str) -> str:
        return self._name("demand", model)

    def lora_held(self, worker_id: str) -> str:
        """Adapters the gateways loaded on one worker (``gateway.adapters``)."""
        return self._name("lora", worker_id)

    def lora_held_pattern(self) -> str:
        return self._name("lora", "*")

    def lora_worker_of(self, name: str) -> str:
        """The worker id in a ``lora:<worker id>`` name (from a SCAN)."""
        return name[len(self._name("lora", "")) :]

    def usage_stream(self) -> str:
        return self._name("usage")

    def usage_dead_letter(self) -> str:
        return self._name("usage", "dead")

    def usage_checkpoints(self) -> str:
        return self._name("usage_ckpt")

    def usage_checkpoints_due(self) -> str:
        return self._name("usage_ckpt_due")

    def audit_events(self) -> str:
        return self._name("audit", "events")

    def content_log(self) -> str:
        return self._name("content_log")

    def key_last_used(self) -> str:
        return self._name("key_last_used")

    def response(self, response_id: str) -> str:
        """Which worker holds a stored Responses API response, and whose it is."""
        return self._name("response", response_id)

    def key_last_used_flushing(self, token: str) -> str:
        """Where a flush moves ``key_last_used`` (RENAME) before writing it to PostgreSQL."""
        return self._name("key_last_used", "flushing", token)

    # ------------------------------------------------------------ quotas and spend

    def _quota(self, tenant_id: object, *parts: object) -> str:
        # The {tenant} hash tag keeps one request's keys in one Redis Cluster slot.
        return self._name("q", "{%s}" % tenant_id, *parts)  # noqa: UP031

    def quota_rpm(self, tenant_id: object, minute: int) -> str:
        return self._quota(tenant_id, "t", "rpm", minute)

    def quota_tpm(self, tenant_id: object, minute: int) -> str:
        return self._quota(tenant_id, "t", "tpm", minute)

    def quota_concurrency(self, tenant_id: object) -> str:
        return self._quota(tenant_id, "t", "conc")

    def quota_monthly_tokens(self, tenant_id: object, month: str) -> str:
        """``month`` is ``YYYYMM`` (UTC)."""
        return self._quota(tenant_id, "t", "tokens", month)

    def quota_batch_tokens(self, tenant_id: object, month: str) -> str:
        """Tokens of the tenant's batch lines this month (``YYYYMM``, UTC): the plan's ``batch_tokens``."""
        return self._quota(tenant_id, "batch", "tokens", month)

    def spend_counter(self, tenant_id: object, period: str) -> str:
        """``period`` is a billing period id (``contract.spend.period_id``)."""
        return self._quota(tenant_id, "spend", period)

    def spend_blocked(self, tenant_id: object) -> str:
        return self._quota(tenant_id, "spend_blocked")

    # ------------------------------------------------------------ the admission queue

    def _admission(self, model: str, *parts: object) -> str:
        # The {model} hash tag keeps one model's queue keys in one Redis Cluster slot.
        return self._name("adm", "{%s}" % model, *parts)  # noqa: UP031

    def admission_slots(self, model: str) -> str:
        """Hash gateway instance → admission slots it holds on the model."""
        return self._admission(model, "slots")

    def admission_alive(self, model: str) -> str:
        """Sorted set gateway instance → heartbeat expiry (epoch ms)."""
        return self._admission(model, "alive")

    def admission_entries(self, model: str) -> str:
        """Hash entry id → ``<gateway>|<band index>|<tenant>|<cost>|<enqueued ms>``."""
        return self._admission(model, "e")

    def admission_granted(self, model: str) -> str:
        return self._admission(model, "granted")

    def admission_virtual_time(self, model: str) -> str:
        return self._admission(model, "vt")

    def admission_deadlines(self, model: str) -> str:
        return self._admission(model, "exp")

    def admission_queue(self, model: str, tier: str) -> str:
        """Sorted set entry id → start tag: one per tier (band of service)."""
        return self._admission(model, "q", tier)

    def admission_alive_pattern(self) -> str:
        return self._name("adm", "*", "alive")

    def admission_model_of(self, name: str) -> str:
        """The model in an ``adm:{<model>}:alive`` name (from a SCAN)."""
        inner = name[len(self._name("adm", "")) :]
        return inner[1 : inner.rindex("}")]

    def admission_channel(self) -> str:
        return self._name("adm")
