"""The usage event: one per admitted request, from the gateway to billing through Redis.

The gateway appends it to the ``usage`` stream (field ``e``), or keeps it as a checkpoint of a
long stream in ``usage_ckpt``; billing's consumer reads it back (``billing.usage``,
``billing.checkpoints``). In code it is ``UsageEvent`` with full field names; on the wire it is
compact JSON with short keys (``WIRE_NAMES``), byte for byte what earlier gateways wrote, so
events already in a stream stay readable across an upgrade.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import orjson

from contract.tiers import BILLED_TIERS

EVENT_FIELD = "e"  # the stream entry's one field

# Where the token counts come from, most exact first (billing.models.UsageSource).
USAGE_SOURCES = frozenset({"engine", "tokenizer", "chunks", "estimate", "checkpoint"})
CHECKPOINT_STATUS = "gateway_lost"  # a checkpoint billed because its gateway died
CHECKPOINT_SOURCE = "checkpoint"

# Field -> wire key, in the order on the wire (``to_wire`` and ``from_wire`` spell it out).
WIRE_NAMES = {
    "request_id": "id",
    "tenant_id": "t",
    "key_id": "k",
    "model": "m",
    "endpoint": "ep",
    "prompt_tokens": "p",
    "completion_tokens": "c",
    "status": "s",
    "http_status": "h",
    "latency_ms": "l",
    "ttft_ms": "f",
    "worker": "w",
    "occurred_at_ms": "ts",
    "usage_source": "u",
    "cached_tokens": "ct",
    "service_tier": "st",
    "queue_ms": "q",
    "batch_id": "b",
}


class MalformedUsageEvent(ValueError):
    """An entry that is not a usage event billing can write (it is dead-lettered, not dropped)."""


@dataclass(slots=True)
class UsageEvent:
    request_id: str
    tenant_id: str
    model: str
    occurred_at_ms: int  # when the request arrived, epoch milliseconds
    key_id: str | None = None
    endpoint: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = "ok"  # ok | error | upstream_error | gateway_stopped | gateway_lost | ...
    http_status: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    worker: str | None = None
    usage_source: str | None = None  # None reads as "engine"
    cached_tokens: int = 0  # of prompt_tokens, how many the engine served from its prefix cache
    service_tier: str = "default"  # contract.tiers.BILLED_TIERS: the tier served and billed
    queue_ms: int = 0  # time the request waited in the gateway's admission queue
    batch_id: str | None = None  # the /v1/batches batch this line belongs to

    def to_wire(self) -> dict[str, Any]:
        # Spelled out rather than looped over WIRE_NAMES: this runs once per request.
        out = {
            "id": self.request_id,
            "t": self.tenant_id,
            "k": self.key_id,
            "m": self.model,
            "ep": self.endpoint,
            "p": self.prompt_tokens,
            "c": self.completion_tokens,
            "s": self.status,
            "h": self.http_status,
            "l": self.latency_ms,
            "f": self.ttft_ms,
            "w": self.worker,
            "ts": self.occurred_at_ms,
        }
        if self.usage_source is not None:  # absent, as earlier gateways wrote it
            out["u"] = self.usage_source
        if self.cached_tokens:  # absent when 0, so events without a cache hit stay byte-identical
            out["ct"] = self.cached_tokens
        # The fields below are absent at their defaults, so earlier events stay byte-identical.
        if self.service_tier != "default":
            out["st"] = self.service_tier
        if self.queue_ms:
            out["q"] = self.queue_ms
        if self.batch_id:
            out["b"] = self.batch_id
        return out

    @classmethod
    def from_wire(cls, data: dict[str, Any], *, strict: bool = True) -> UsageEvent:
        """From the wire mapping; ``strict`` checks every field as billing must (types, ranges)."""
        try:
            event = cls(
                request_id=data["id"],
                tenant_id=data["t"],
                model=data["m"],
                occurred_at_ms=data["ts"],
                key_id=data.get("k"),
                endpoint=data.get("ep", ""),
                prompt_tokens=data.get("p", 0),
                completion_tokens=data.get("c", 0),
                status=data.get("s", "ok"),
                http_status=data.get("h", 0),
                latency_ms=data.get("l", 0),
                ttft_ms=data.get("f"),
                worker=data.get("w"),
                usage_source=data.get("u"),
                cached_tokens=data.get("ct", 0),
                service_tier=data.get("st", "default"),
                queue_ms=data.get("q", 0),
                batch_id=data.get("b"),
            )
        except KeyError as exc:
            raise MalformedUsageEvent(f"missing field {exc}") from None
        if strict:
            event.check()
        return event

    def check(self) -> None:
        """Raise ``MalformedUsageEvent`` unless PostgreSQL will take every field as it is."""
        problem = _problem(self)
        if problem:
            raise MalformedUsageEvent(problem)

    def encode(self) -> bytes:
        return orjson.dumps(self.to_wire())

    def to_fields(self) -> dict[str, bytes]:
        return {EVENT_FIELD: self.encode()}

    @classmethod
    def decode(cls, raw: str | bytes | None) -> UsageEvent:
        if not raw:
            raise MalformedUsageEvent("empty event")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedUsageEvent(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedUsageEvent("not a JSON object")
        return cls.from_wire(data)

    @classmethod
    def from_fields(cls, fields: dict[Any, Any] | None) -> UsageEvent:
        """From a stream entry's fields (str or bytes keys), checked strictly."""
        if not isinstance(fields, dict):
            raise MalformedUsageEvent("no fields")
        raw = fields.get(EVENT_FIELD, fields.get(EVENT_FIELD.encode()))
        return cls.decode(raw)

    def as_checkpoint(self) -> UsageEvent:
        """What a checkpoint of this (unfinished) stream bills if its gateway dies."""
        return replace(self, status=CHECKPOINT_STATUS, http_status=0, usage_source=CHECKPOINT_SOURCE)


def _int_ok(value: object) -> bool:
    return value is None or (type(value) is int and 0 <= value < 2**31)


def _str_ok(value: object) -> bool:
    return value is None or isinstance(value, str)


def _problem(event: UsageEvent) -> str | None:
    try:
        uuid.UUID(str(event.tenant_id))
        if event.key_id is not None:
            uuid.UUID(str(event.key_id))
    except ValueError:
        return "tenant_id or key_id is not a UUID"
    if not isinstance(event.request_id, str) or not 0 < len(event.request_id) <= 64:
        return "request_id must be 1-64 characters"
    if not isinstance(event.model, str) or not 0 < len(event.model) <= 200:
        return "model must be 1-200 characters"
    if type(event.occurred_at_ms) is not int or event.occurred_at_ms <= 0:
        return "occurred_at_ms must be a positive integer"
    if not (
        _int_ok(event.prompt_tokens)
        and _int_ok(event.completion_tokens)
        and _int_ok(event.http_status)
        and _int_ok(event.latency_ms)
        and _int_ok(event.ttft_ms)
        and _int_ok(event.cached_tokens)
        and event.cached_tokens is not None
        and _int_ok(event.queue_ms)
        and event.queue_ms is not None
    ):
        return "token counts, HTTP status and times must be integers in [0, 2**31)"
    if not (_str_ok(event.endpoint) and _str_ok(event.status) and _str_ok(event.worker)):
        return "endpoint, status and worker must be strings"
    if event.usage_source is not None and event.usage_source not in USAGE_SOURCES:
        return f"unknown usage_source {event.usage_source!r}"
    if event.service_tier not in BILLED_TIERS:
        return f"unknown service_tier {event.service_tier!r}"
    if event.batch_id is not None and (
        not isinstance(event.batch_id, str) or not 0 < len(event.batch_id) <= 64
    ):
        return "batch_id must be 1-64 characters"
    if event.cached_tokens > (event.prompt_tokens or 0):
        return "cached_tokens cannot exceed prompt_tokens"
    return None
