"""``contract.spend``'s tier arithmetic: percents in hundredths, one round-up per request."""

from __future__ import annotations

from decimal import Decimal

import pytest

from contract import spend, tiers


@pytest.mark.parametrize(
    ("value", "hundredths"),
    [("50", 5_000), ("33.33", 3_333), ("0", 0), ("1000", 100_000), (Decimal("12.5"), 1_250), (200, 20_000)],
)
def test_a_mirrored_percent_reads_in_hundredths(value, hundredths):
    assert spend.parse_percent(value) == hundredths


@pytest.mark.parametrize("value", [None, "", "abc", "-5", "12.345", "NaN", "Infinity"])
def test_a_malformed_percent_reads_as_absent(value):
    assert spend.parse_percent(value) is None


def test_the_tier_percent_is_the_mirrored_one_else_the_contracts_default():
    mirrored = {"price_percent_flex": "40", "price_percent_priority": "oops"}
    assert spend.tier_percent("flex", mirrored) == 4_000
    assert spend.tier_percent("priority", mirrored) == tiers.DEFAULT_PRICE_PERCENT["priority"] * 100
    assert spend.tier_percent("batch", mirrored) == tiers.DEFAULT_PRICE_PERCENT["batch"] * 100
    assert spend.tier_percent("batch", None) == 5_000
    assert spend.tier_percent("default", {"price_percent_default": "1"}) == spend.FULL_PERCENT
    assert spend.tier_percent(None, mirrored) == spend.FULL_PERCENT
    assert spend.tier_percent("unknown", mirrored) == spend.FULL_PERCENT


def test_the_cost_is_rounded_up_once_after_the_percent():
    # 3 tokens at 0.333333 per million (333,333 micros): 0.999999 micro-units, at 50 %: 0.4999995.
    assert spend.cost_micros(3, 0, 333_333, 0) == 1
    assert spend.cost_micros(3, 0, 333_333, 0, percent=5_000) == 1
    # 2,000,000 input tokens at $0.15/M = 300,000 micros; at 33.33 %: 99,990 exactly.
    assert spend.cost_micros(2_000_000, 0, 150_000, 0, percent=3_333) == 99_990
    # Rounding per part would give 2 here; the whole is rounded once: ceil(0.5 + 0.5) = 1.
    assert spend.cost_micros(1, 1, 500_000, 500_000, percent=spend.FULL_PERCENT) == 1
    assert spend.cost_micros(10, 10, 100_000, 100_000, percent=0) == 0
    cached = spend.cost_micros(1_000, 0, 200_000, 0, cached_tokens=400, cached_micros=100_000, percent=20_000)
    assert cached == -(-(600 * 200_000 + 400 * 100_000) * 2 // 1_000_000)


def test_tier_cost_applies_the_mirrored_percent():
    mirrored = {"price_percent_flex": "25"}
    full = spend.cost_micros(4_000_000, 1_000_000, 100_000, 400_000)
    assert full == 800_000
    assert (
        spend.tier_cost_micros(4_000_000, 1_000_000, 100_000, 400_000, tier="flex", mirrored=mirrored)
        == 200_000
    )
    assert spend.tier_cost_micros(4_000_000, 1_000_000, 100_000, 400_000, tier="priority") == 1_600_000
    assert spend.tier_cost_micros(4_000_000, 1_000_000, 100_000, 400_000, tier="default") == full


def test_the_mirror_writes_percents_the_gateway_reads_back():
    for value in ("50", "50.00", "33.30", "0.00", "1000"):
        text = spend.percent_text(Decimal(value))
        assert Decimal(text) == Decimal(value) and spend.parse_percent(text) == int(Decimal(value) * 100)
    assert spend.percent_text(Decimal("50.00")) == "50" and spend.percent_text(Decimal("0.00")) == "0"
