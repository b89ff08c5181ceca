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
* the same hash carries ``price_percent_flex``, ``price_percent_priority`` and
  ``price_percent_batch``: the percent of those prices billed in each service tier
  (``contract.tiers``), as decimal strings with at most two decimals (``"50"``, ``"33.33"``);
  absent or malformed: ``contract.tiers.DEFAULT_PRICE_PERCENT``. The default tier is always 100 %.
  On this path a percent is an integer of **hundredths of a percent** (``tier_percent``: 50 % is
  5,000), so a request's cost stays integer arithmetic and is rounded up once (``cost_micros``);
* the tenant mirror (``tenant:<id>`` hash) carries ``spend_limit_micros`` (absent or empty: no
  limit);
* the counter is ``RedisNames.spend_counter(tenant id, period id)``, expiring
  ``COUNTER_TTL_SECONDS`` after its last write.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from contract import tiers

MICROS = 1_000_000
# A percent in hundredths: 100 % (the default tier) is FULL_PERCENT.
PERCENT_SCALE = 100
FULL_PERCENT = 100 * PERCENT_SCALE
# The mirror's field for each tier's percent (the default tier has none: it is always 100 %).
PERCENT_FIELDS = {tier: f"price_percent_{tier}" for tier in (tiers.FLEX, tiers.PRIORITY, tiers.BATCH)}
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


def percent_text(percent: Decimal | int | str) -> str:
    """A percent as the mirror writes it: a plain decimal string without trailing zeros."""
    text = f"{Decimal(percent).normalize():f}"
    return "0" if text in ("-0", "") else text


def parse_percent(value: str | Decimal | int | None) -> int | None:
    """A percent (``"50"``, ``"33.33"``) in hundredths of a percent; None when absent, negative,
    or finer than a hundredth (malformed mirror data reads as absent, not as a crash)."""
    if value is None or value == "":
        return None
    try:
        scaled = Decimal(value) * PERCENT_SCALE
    except (InvalidOperation, TypeError, ValueError):
        return None
    if not scaled.is_finite() or scaled < 0 or scaled != scaled.to_integral_value():
        return None
    return int(scaled)


def tier_percent(tier: str | None, mirrored: Mapping[str, str | None] | None = None) -> int:
    """The percent (in hundredths) billed for ``tier`` given a model's mirrored hash (or the
    ``price_percent_*`` fields of it): the mirrored one, else the contract's default.

    ``default`` (and None) is always ``FULL_PERCENT``; an unknown tier too.
    """
    field = PERCENT_FIELDS.get(tier or tiers.DEFAULT)
    if field is None:
        return FULL_PERCENT
    own = parse_percent(mirrored.get(field)) if mirrored is not None else None
    if own is not None:
        return own
    return tiers.DEFAULT_PRICE_PERCENT[tier or tiers.DEFAULT] * PERCENT_SCALE


def cost_micros(
    prompt_tokens: int,
    completion_tokens: int,
    input_micros: int,
    output_micros: int,
    *,
    cached_tokens: int = 0,
    cached_micros: int | None = None,
    percent: int = FULL_PERCENT,
) -> int:
    """A request's cost in micro-units, from per-million-token prices in micro-units.

    ``cached_tokens`` of the ``prompt_tokens`` are priced at ``cached_micros`` (None: the input
    price), the rest of the prompt at ``input_micros``. ``percent`` (hundredths of a percent, see
    ``tier_percent``) scales the whole cost for the request's service tier.

    Rounding: none until the end, then **once, up** to the next micro-unit: the cost is
    ``ceil(Σ tokens × price_micros × percent / (10^6 × 10^4))`` in integers. For a single request
    this is exactly billing's exact cost (``billing.pricing``: tokens × price × percent / 100 per
    million) rounded up to a micro-unit, so the gateway's counter is never below billing's spend.
    """
    cached = min(max(cached_tokens, 0), prompt_tokens)
    cached_price = input_micros if cached_micros is None else cached_micros
    total = (
        (prompt_tokens - cached) * input_micros + cached * cached_price + completion_tokens * output_micros
    )
    if percent == FULL_PERCENT:
        return -(-total // MICROS)
    return -(-(total * max(percent, 0)) // (MICROS * FULL_PERCENT))


def tier_cost_micros(
    prompt_tokens: int,
    completion_tokens: int,
    input_micros: int,
    output_micros: int,
    *,
    tier: str | None,
    mirrored: Mapping[str, str | None] | None = None,
    cached_tokens: int = 0,
    cached_micros: int | None = None,
) -> int:
    """``cost_micros`` in ``tier`` at the percent ``mirrored`` (a model's hash) gives it."""
    return cost_micros(
        prompt_tokens,
        completion_tokens,
        input_micros,
        output_micros,
        cached_tokens=cached_tokens,
        cached_micros=cached_micros,
        percent=tier_percent(tier, mirrored),
    )
