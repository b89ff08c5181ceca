"""Service tiers at the gateway: which tier a request is served in, its price, and the echo.

A request may name OpenAI's ``service_tier`` (``auto``, ``default``, ``flex``, ``priority``; on
``/v1/messages`` Anthropic's ``auto`` or ``standard_only``, read as ``auto`` and ``default``). The
tenant's plan band (``principal.tenant.plan["band"]``) bounds it (``contract.tiers.resolve``): a
tier above the band is the client's 400 ``service_tier_not_allowed`` naming what the plan allows,
never a silent downgrade, so a client that pays for ``priority`` knows when it is not getting it.
Batch lines are served in ``batch`` whatever they name.

The tier served then

* **prices the request**: the spend reservation and settlement use the model's prices scaled by
  the tier's percent (``ModelInfo.price_percents``, mirrored from the price row; absent →
  ``contract.tiers.DEFAULT_PRICE_PERCENT``), applied once to the request's cost in integer
  micro-units, rounded up (``contract.spend.cost_micros``) — billing prices the record the same
  way from PostgreSQL;
* **goes to the engine** as vLLM's request ``priority`` (``contract.tiers.RANK``: lower first;
  workers run with ``--scheduling-policy priority``);
* **is echoed** as OpenAI does: ``"service_tier"`` in a JSON answer and in every chunk of a chat
  or completions stream, ``response.service_tier`` in Responses (answer and events), and
  ``usage.service_tier`` (``standard``/``priority``/``batch``) in Anthropic Messages.

The echo is spliced into the bytes rather than re-encoding a parsed body: an engine's own
``"service_tier": null``/value is replaced where present, else the field is inserted after the
object's opening brace (or the ``"response":{`` / ``"usage":{`` that holds it). A JSON string
cannot contain the bytes ``"service_tier":`` (its quotes would be escaped), so the search never
matches generated text. Pure functions of bytes: on a stream chunk three ``in`` tests and one
``replace`` (about a quarter of ``sse.rewrite``'s own cost per chunk, measured side by side).
"""

from __future__ import annotations

import re
from typing import Any

from contract import spend
from contract import tiers as contract_tiers
from contract.tiers import BATCH, DEFAULT, FLEX, PRIORITY, RANK
from gateway.errors import GatewayError

# Anthropic's request values (``service_tier`` on /v1/messages) and what they mean here.
ANTHROPIC_REQUEST = {"auto": contract_tiers.AUTO, "standard_only": DEFAULT}
# Anthropic's ``usage.service_tier`` for the tier served (its API knows standard, priority, batch).
ANTHROPIC_ECHO = {PRIORITY: "priority", DEFAULT: "standard", FLEX: "standard", BATCH: "batch"}

# Endpoints whose answers say the tier served (OpenAI's chat, completions, embeddings, Responses;
# Anthropic's Messages).
ECHOED = frozenset({"chat", "completions", "embeddings", "responses", "messages"})

_KEY = b'"service_tier"'
_VALUE = re.compile(rb'"service_tier"\s*:\s*(?:null|"[^"\\]*")')


def serve(requested: str | None, plan: dict[str, Any], *, batch: bool = False) -> str:
    """The tier a request is served in; a 400 ``service_tier_not_allowed`` above the plan's band.

    ``requested``: the validated ``service_tier`` (None when absent); ``plan``: the tenant's
    mirrored plan limits; ``batch``: a ``/v1/batches`` line (always the ``batch`` tier).
    """
    if batch:
        return BATCH
    band = plan.get("band") if isinstance(plan, dict) else None
    band = band if isinstance(band, str) else None
    tier = contract_tiers.resolve(requested, band)
    if tier is None:
        allowed = contract_tiers.allowed_tiers(band)
        raise GatewayError(
            400,
            f"The service tier '{requested}' is not available on your plan. Use one of: "
            f"{', '.join(('auto', *allowed))}.",
            param="service_tier",
            code="service_tier_not_allowed",
        )
    return tier


def priority(tier: str) -> int:
    """vLLM's request ``priority`` for a tier (lower runs first)."""
    return RANK.get(tier, RANK[DEFAULT])


def with_priority(raw: bytes, rank: int) -> bytes:
    """A client's JSON object body, untouched otherwise, with ``"priority": rank`` first.

    For bodies the proxy does not otherwise rewrite (embeddings, rerank, score) and that carry no
    ``priority``/``service_tier`` of their own (those are re-encoded without them).
    """
    brace = raw.find(b"{") + 1
    return raw[:brace] + b'"priority":%d,' % rank + raw[brace:]


# ---------------------------------------------------------------------------------- prices


def percent(info: Any, tier: str) -> int:
    """The percent (hundredths, ``contract.spend``) of the model's prices a request in ``tier``
    pays: the mirror's, else the contract's default."""
    return spend.tier_percent(tier, info.price_percents)


def prices(info: Any, tier: str) -> dict[str, Any]:
    """``quotas.admit``'s price arguments for a request in ``tier``: the model's prices and the
    tier's percent, which the settlement applies once to the whole cost (``spend.cost_micros``)."""
    return {
        "price_input_micros": info.price_input_micros,
        "price_output_micros": info.price_output_micros,
        "price_cached_input_micros": info.price_cached_input_micros,
        "price_percent": percent(info, tier),
    }


# ---------------------------------------------------------------------------------- the echo


def field(tier: str, endpoint: str) -> bytes:
    """The ``"service_tier":"…"`` bytes a response of ``endpoint`` carries for ``tier``."""
    value = ANTHROPIC_ECHO.get(tier, "standard") if endpoint == "messages" else tier
    return b'"service_tier":"' + value.encode() + b'"'


def _insert(data: bytes, anchor: bytes, tier_field: bytes, count: int = -1) -> bytes:
    spliced = data.replace(anchor, anchor + tier_field + b",", count)
    if anchor + tier_field + b",}" in spliced:  # an empty object
        spliced = spliced.replace(anchor + tier_field + b",}", anchor + tier_field + b"}")
    return spliced


def _set(data: bytes, anchor: bytes, tier_field: bytes, count: int = -1) -> bytes:
    if _KEY in data:
        return _VALUE.sub(tier_field, data, count=max(count, 0))
    return _insert(data, anchor, tier_field, count)


def splice_answer(raw: bytes, tier_field: bytes, endpoint: str) -> bytes:
    """A complete JSON answer with the tier set (Messages: in ``usage``; others: at the top).

    Rerank and score answers (Cohere's and vLLM's shapes, which have no such field) pass as they are.
    """
    if endpoint not in ECHOED:
        return raw
    if endpoint == "messages":
        return _set(raw, _anchor(raw, b'"usage":{'), tier_field, 1)
    if not raw.startswith(b"{"):
        return raw
    return _set(raw, b"{", tier_field, 1)


def splice_chunks(out: bytes, tier_field: bytes) -> bytes:
    """Chat and completions SSE bytes (complete events) with the tier set on every JSON chunk."""
    if not out:
        return out
    if _KEY in out or b"data:{" in out or b"data: {}" in out:
        # The engine's own value, unspaced or empty chunks: event by event (rare).
        return b"".join(_chunk(event, tier_field) for event in out.split(b"\n\n"))
    return out.replace(b"data: {", b"data: {" + tier_field + b",")


def _chunk(event: bytes, tier_field: bytes) -> bytes:
    if not event:
        return event
    if _KEY in event:
        event = _VALUE.sub(tier_field, event, count=1)
    elif event.startswith(b"data: {"):
        event = _insert(event, b"data: {", tier_field, 1)
    elif event.startswith(b"data:{"):
        event = _insert(event, b"data:{", tier_field, 1)
    return event + b"\n\n"


def splice_typed(out: bytes, tier_field: bytes, endpoint: str) -> bytes:
    """Responses events (``response.service_tier``) or Messages events (``usage.service_tier``)."""
    name = b'"usage"' if endpoint == "messages" else b'"response"'
    if name not in out:  # most events: deltas
        return out
    anchor = _anchor(out, name + b":{")
    if anchor not in out:
        return out
    return _set(out, anchor, tier_field)


def _anchor(data: bytes, compact: bytes) -> bytes:
    """``"name":{`` as the engine wrote it: compact (vLLM, orjson) or with a space (``json.dumps``)."""
    if compact in data:
        return compact
    spaced = compact.replace(b":{", b": {")
    return spaced if spaced in data else compact
