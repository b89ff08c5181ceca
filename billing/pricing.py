"""Usage × price: every record priced by the Price in effect when it *occurred*.

One query groups a set of usage records by model and by the price row in effect at each record's
``occurred_at`` (a correlated subquery over the append-only Price history), so a price change in
the middle of a period splits that model's usage exactly at the change. A LoRA adapter's usage is
recorded under its served name (``<tenant slug>/<name>``) and priced by the adapter's own rows. Rollups could not do this
(a price may change mid-hour), so invoices and spend are computed from the records.

Prompt tokens the engine served from its prefix cache (``UsageRecord.cached_tokens``) are a line
of their own (``TokenKind.CACHED``) at the price's cached-input price (``Price.cached_input_price``:
its own, or a fraction of the input price); the input line holds the rest of the prompt.

Records are grouped by service tier too (``UsageRecord.service_tier``, ``contract.tiers``): a line's
unit price is the price row's price for its kind × ``Price.tier_percent(tier)`` / 100, exact (no
rounding: ``money.line_amount`` rounds the line's amount once). Flex is cheaper, priority dearer, and
``/v1/batches`` lines are billed in the ``batch`` tier; records from before tiers existed are
``default`` (100 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import CharField, Count, F, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, NullIf

from billing import money
from billing.models import TokenKind
from contract import tiers
from models_registry.models import Price

HUNDRED = Decimal(100)


@dataclass(frozen=True)
class PricedLine:
    """Tokens of one kind, for one model, at one price (``price`` None: the model had no price)."""

    model: str
    kind: str
    tokens: int
    price: Price | None
    requests: int
    late_requests: int
    tier: str = tiers.DEFAULT

    @property
    def base_unit_price(self) -> Decimal:
        """The price row's per-million price for this kind, before the tier's percent."""
        if self.price is None:
            return Decimal("0")
        if self.kind == TokenKind.INPUT:
            return self.price.input_per_million
        if self.kind == TokenKind.CACHED:
            return self.price.cached_input_price
        return self.price.output_per_million

    @property
    def tier_percent(self) -> Decimal:
        """The percent of the price billed in this line's tier; the default tier is always 100."""
        if self.price is None or self.tier == tiers.DEFAULT:
            return HUNDRED
        return self.price.tier_percent(self.tier)

    @property
    def unit_price(self) -> Decimal:
        """Per million tokens in this line's tier: exact (a Decimal product, never rounded)."""
        base = Decimal(self.base_unit_price)
        percent = self.tier_percent
        return base if percent == HUNDRED else base * percent / HUNDRED

    def amount(self, currency: str) -> Decimal:
        return money.line_amount(self.tokens, self.unit_price, currency)

    def exact_cost(self) -> Decimal:
        return money.exact_cost(self.tokens, self.unit_price)


class CurrencyMismatch(ValueError):
    pass


def billed_tier():
    """The record's service tier as billed: an empty one (none recorded) is ``default``."""
    return Coalesce(NullIf(F("service_tier"), Value("")), Value(tiers.DEFAULT), output_field=CharField())


def _price_in_effect():
    return Subquery(
        Price.objects.for_served_name(OuterRef("model"))
        .filter(effective_from__lte=OuterRef("occurred_at"))
        .order_by("-effective_from")
        .values("pk")[:1]
    )


def priced_lines(records: QuerySet, *, currency: str, late_before=None, extra_group: tuple = ()) -> list:
    """Group ``records`` (UsageRecord queryset) into priced lines: input, cached input, output.

    ``late_before``: records that occurred before it are counted as late. ``extra_group``: more
    fields to group by (e.g. a day); each result then is ``(group_values, PricedLine)``.
    """
    late = Q(occurred_at__lt=late_before) if late_before is not None else Q(pk__in=[])
    rows = list(
        records.annotate(price_id=_price_in_effect(), billed_tier=billed_tier())
        .values(*extra_group, "model", "price_id", "billed_tier")
        .annotate(
            n=Count("pk"),
            n_late=Count("pk", filter=late),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cached=Sum("cached_tokens"),
        )
        .order_by(*extra_group, "model")
    )
    prices = Price.objects.in_bulk({row["price_id"] for row in rows if row["price_id"]})
    out: list = []
    for row in rows:
        price = prices.get(row["price_id"])
        if price is not None and price.currency.upper() != currency.upper():
            raise CurrencyMismatch(
                f"{row['model']} is priced in {price.currency} but the bill is in {currency}; "
                "add a price in the billing currency (BERTH_BILLING_CURRENCY)."
            )
        cached = row["cached"] or 0
        kinds = (
            (TokenKind.INPUT, (row["prompt"] or 0) - cached),
            (TokenKind.CACHED, cached),
            (TokenKind.OUTPUT, row["completion"]),
        )
        for kind, tokens in kinds:
            if not tokens:
                continue
            line = PricedLine(
                row["model"], kind, int(tokens), price, row["n"], row["n_late"], row["billed_tier"]
            )
            out.append((tuple(row[f] for f in extra_group), line) if extra_group else line)
    if extra_group:
        out.sort(key=lambda item: (item[0], _sort_key(item[1])))
    else:
        out.sort(key=_sort_key)
    return out


def _sort_key(line: PricedLine):
    started = line.price.effective_from.timestamp() if line.price else 0.0
    return (line.model, started, _TIER_ORDER.get(line.tier, 9), _KIND_ORDER.get(line.kind, 3))


_KIND_ORDER: dict[str, int] = {TokenKind.INPUT: 0, TokenKind.CACHED: 1, TokenKind.OUTPUT: 2}
# Lines of one model and price: default first, then the interactive tiers, then batch.
_TIER_ORDER: dict[str, int] = {tier: n for n, tier in enumerate(tiers.BILLED_TIERS)}
