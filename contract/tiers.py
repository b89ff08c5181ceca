"""Service tiers and priority bands: the one vocabulary of the gateway, the engines and billing.

A request may ask for ``service_tier`` (OpenAI's parameter): ``auto`` (the plan's own tier),
``default``, ``flex`` or ``priority``. A plan's **band** is the highest tier its tenants may use:
``priority`` (any tier), ``standard`` (``default`` or ``flex``), ``best_effort`` (``flex`` only).
Batch lines (``/v1/batches``) run in the ``batch`` tier, below every interactive one.

The tier served is echoed in the response (as OpenAI does), recorded on the usage event and the
usage record, and priced by the price row's percent for that tier (``Price.tier_percent``).
Engines get it as vLLM's request ``priority`` (``--scheduling-policy priority``: lower runs first).
"""

from __future__ import annotations

from typing import Final

# Tiers a request may name (besides "auto"), and the tier of batch lines.
DEFAULT: Final = "default"
FLEX: Final = "flex"
PRIORITY: Final = "priority"
BATCH: Final = "batch"
AUTO: Final = "auto"

REQUEST_TIERS: Final = (AUTO, DEFAULT, FLEX, PRIORITY)
BILLED_TIERS: Final = (DEFAULT, FLEX, PRIORITY, BATCH)

# A plan's band, and the tier "auto" resolves to under it.
BAND_PRIORITY: Final = "priority"
BAND_STANDARD: Final = "standard"
BAND_BEST_EFFORT: Final = "best_effort"
BANDS: Final = (BAND_PRIORITY, BAND_STANDARD, BAND_BEST_EFFORT)
BAND_TIER: Final = {BAND_PRIORITY: PRIORITY, BAND_STANDARD: DEFAULT, BAND_BEST_EFFORT: FLEX}

# Order of service, lower first: the admission queue's band index and the engine's ``priority``.
RANK: Final = {PRIORITY: 0, DEFAULT: 1, FLEX: 2, BATCH: 3}

# Percent of the price row's prices billed per tier when the row does not set its own.
DEFAULT_PRICE_PERCENT: Final = {DEFAULT: 100, FLEX: 50, PRIORITY: 200, BATCH: 50}


def allowed_tiers(band: str | None) -> tuple[str, ...]:
    """The interactive tiers a plan of ``band`` may ask for (an unknown band reads as standard)."""
    ceiling = RANK[BAND_TIER.get(band or BAND_STANDARD, DEFAULT)]
    return tuple(t for t in (PRIORITY, DEFAULT, FLEX) if RANK[t] >= ceiling)


def resolve(requested: str | None, band: str | None) -> str | None:
    """The tier a request is served in, or None when its plan does not allow the one it named.

    ``requested`` None or ``auto``: the band's own tier.
    """
    if requested is None or requested == AUTO:
        return BAND_TIER.get(band or BAND_STANDARD, DEFAULT)
    return requested if requested in allowed_tiers(band) else None
