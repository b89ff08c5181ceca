"""Money in Berth: ``Decimal`` amounts with a currency, never floats.

Prices are per million tokens with up to six decimal places (``Price.input_per_million``). An
invoice line's amount is ``tokens × unit price ÷ 1,000,000`` computed exactly and then rounded
**once**, here, in :func:`line_amount`: half-up to the currency's minor unit. Totals are sums of
rounded lines, so an invoice always adds up to the cent on paper. Nothing else rounds money.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

ONE_MILLION = Decimal(1_000_000)
# Minor units per ISO 4217 currency; the ones not listed have two.
_ZERO_DECIMAL = {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV"}
_THREE_DECIMAL = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}


def minor_exponent(currency: str) -> int:
    code = currency.upper()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_exponent(currency))


def exact_cost(tokens: int, per_million: Decimal) -> Decimal:
    """Unrounded cost of ``tokens`` at ``per_million``: used for estimates, never for invoices."""
    return Decimal(int(tokens)) * Decimal(per_million) / ONE_MILLION


def line_amount(tokens: int, per_million: Decimal, currency: str) -> Decimal:
    """The one place money is rounded: half-up to the currency's minor unit, per invoice line."""
    return exact_cost(tokens, per_million).quantize(quantum(currency), rounding=ROUND_HALF_UP)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Present an (already exact) estimate in minor units, for display; invoices use line_amount."""
    return Decimal(amount).quantize(quantum(currency), rounding=ROUND_HALF_UP)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """An already-rounded amount as an integer of minor units (what Stripe's API takes)."""
    scaled = Decimal(amount).scaleb(minor_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not rounded to the currency's minor unit")
    return int(scaled)


_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def _with_currency(text: str, currency: str) -> str:
    symbol = _SYMBOLS.get(currency.upper())
    return f"{symbol}{text}" if symbol else f"{text} {currency.upper()}"


def format_money(amount: Decimal, currency: str) -> str:
    return _with_currency(f"{Decimal(amount):,.{minor_exponent(currency)}f}", currency)


def format_price(per_million: Decimal, currency: str) -> str:
    """A per-million price with all its significant decimals, at least two (e.g. $0.125, $2.50)."""
    text = f"{Decimal(per_million).normalize():f}"
    if "." not in text or len(text.split(".")[1]) < 2:
        text = f"{Decimal(per_million):.2f}"
    return _with_currency(text, currency)
