"""The per-tenant spend counter: what the gateway adds on settlement and billing reconciles.

Spend limits must hold within one request, so the gateway cannot wait for PostgreSQL: every
settled request adds its cost to a Redis counter for the tenant's current billing period, and
admission refuses once the counter reaches the tenant's limit. PostgreSQL stays the record:
billing's periodic spend check raises the counter to what the usage records say (never lowers
it, since events still in the usage stream are not in PostgreSQL yet).

The units, shared by the gateway and billing:

* money on this path is an integer number of **micro-units** of the billing currency
  (1 USD = 1,000,000); a request's cost is rounded up to the next micro-unit;
* the model mirror (``model:<name>`` hash) carries ``price_input_micros``,
  ``price_output_micros`` and ``price_cached_input_micros``: the current price per **million**
  tokens in micro-units (absent: free; a cached price absent beside an input price: the input
  price). Cached input tokens are the part of the prompt the engine served from its prefix cache;
  they are priced at the cached price and the rest of the prompt at the input price;
* the tenant mirror (``tenant:<id>`` hash) carries ``spend_limit_micros`` (absent or empty: no
  limit);
* the counter is ``RedisNames.spend_counter(tenant id, period id)``, expiring
  ``COUNTER_TTL_SECONDS`` after its last write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

MICROS = 1_000_000
COUNTER_TTL_SECONDS = 40 * 86400
PERIOD_KINDS = ("month", "week", "day")


def period_id(kind: str, now: datetime | None = None) -> str:
    """The billing period containing ``now`` (UTC): ``m202611``, ``w2026-48`` (ISO week), ``d20261129``."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if kind == "month":
        return f"m{now:%Y%m}"
    if kind == "week":
        year, week, _ = now.isocalendar()
        return f"w{year}-{week:02d}"
    if kind == "day":
        return f"d{now:%Y%m%d}"
    raise ValueError(f"unknown billing period kind {kind!r}; expected one of {PERIOD_KINDS}")


def to_micros(amount: Decimal | str | int) -> int:
    """A money amount (currency units) in micro-units, rounded up."""
    return int((Decimal(amount) * MICROS).to_integral_value(rounding=ROUND_CEILING))


def cost_micros(
    prompt_tokens: int,
    completion_tokens: int,
    input_micros: int,
    output_micros: int,
    *,
    cached_tokens: int = 0,
    cached_micros: int | None = None,
) -> int:
    """A request's cost in micro-units, from per-million-token prices in micro-units (rounded up).

    ``cached_tokens`` of the ``prompt_tokens`` are priced at ``cached_micros`` (None: the input
    price), the rest of the prompt at ``input_micros``.
    """
    cached = min(max(cached_tokens, 0), prompt_tokens)
    cached_price = input_micros if cached_micros is None else cached_micros
    total = (
        (prompt_tokens - cached) * input_micros + cached * cached_price + completion_tokens * output_micros
    )
    return -(-total // MICROS)
