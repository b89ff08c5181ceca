"""Money and number filters for console templates."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django import template
from django.conf import settings

from billing.money import format_money, format_price, round_money

register = template.Library()


@register.filter
def money(value, currency: str = ""):
    """An amount in its currency, to the minor unit (estimates are rounded for display only)."""
    if value is None or value == "":
        return ""
    currency = currency or settings.BILLING_CURRENCY
    return format_money(round_money(Decimal(value), currency), currency)


@register.filter
def price(value, currency: str = ""):
    """A per-million price with its significant decimals (e.g. $0.125)."""
    return format_price(value, currency or settings.BILLING_CURRENCY)


@register.filter
def thousands(value):
    return f"{int(value):,}"


@register.filter
def last_day(end):
    """The last day inside a half-open period ending at ``end``."""
    return end - timedelta(microseconds=1)


@register.filter
def percent(value):
    """A 0..1 fraction as a whole-ish percentage ("42%", "0.5%"); an em dash when there is none."""
    if value is None or value == "":
        return "—"
    share = float(value) * 100
    return f"{share:.1f}%" if 0 < share < 10 else f"{share:.0f}%"
