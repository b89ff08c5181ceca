"""Changing the model registry: every write to a model or its prices, then its Redis mirror.

The gateway knows models only through the mirror (``models_registry/mirror.py``), so whatever
registers, edits, renames or deletes a model, or adds a price (a model's or a LoRA adapter's),
goes through these functions: the
admin, ``pull_model`` and the bootstrap of ``manage.py up``. Each writes PostgreSQL inside a
transaction and publishes after the commit, so a rolled-back change never reaches Redis and a
committed one reaches it at once. A row changed with the bare ORM reaches the mirror at the next
periodic ``resync_model_mirror``; a price scheduled for later is published when it takes effect by
billing's spend check (``billing.spend.republish_prices``).

It also says what a price means per service tier (``tier_prices``): flex, priority and batch
requests are billed at the price row's percent for the tier (``Price.tier_percent``), which the
console's models page and the API's model list show beside the default price when it differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from audit import trail
from contract import tiers
from models_registry import adapters, manifests, mirror
from models_registry.models import Model, Price

HUNDRED = Decimal(100)
# The tiers priced at a percent of the default price, in the order a price list shows them.
PERCENT_TIERS = (tiers.FLEX, tiers.PRIORITY, tiers.BATCH)


@dataclass(frozen=True)
class TierPrice:
    """A price row's per-million prices in one service tier (exact: price × percent / 100)."""

    tier: str
    percent: Decimal
    input_per_million: Decimal
    cached_input_per_million: Decimal
    output_per_million: Decimal


def tier_prices(price: Price | None, *, only_differing: bool = False) -> list[TierPrice]:
    """``price`` in flex, priority and batch (each at ``price.tier_percent``); with
    ``only_differing`` only the tiers whose percent is not 100 (a price list shows those)."""
    if price is None:
        return []
    out = []
    for tier in PERCENT_TIERS:
        percent = price.tier_percent(tier)
        if only_differing and percent == HUNDRED:
            continue
        out.append(
            TierPrice(
                tier=tier,
                percent=percent,
                input_per_million=Decimal(price.input_per_million) * percent / HUNDRED,
                cached_input_per_million=price.cached_input_price * percent / HUNDRED,
                output_per_million=Decimal(price.output_per_million) * percent / HUNDRED,
            )
        )
    return out


def annotated_price(model: Model) -> Price | None:
    """The price in effect from ``Model.objects.with_current_price()``'s annotations (no query)."""
    if getattr(model, "price_input", None) is None:
        return None
    return Price(
        model=model,
        input_per_million=model.price_input,
        output_per_million=model.price_output,
        cached_input_per_million=getattr(model, "price_cached_own", None),
        flex_percent=getattr(model, "price_flex_percent", None),
        priority_percent=getattr(model, "price_priority_percent", None),
        batch_percent=getattr(model, "price_batch_percent", None),
        currency=model.price_currency,
        effective_from=model.price_from,
    )


def publish(*, model: Model) -> None:
    """Republish ``model`` after the commit: for changes to its related rows (allowed tenants,
    prices added in an admin inline) that its own save did not see."""
    transaction.on_commit(lambda: mirror.publish_model(model))


def save_model(*, model: Model) -> Model:
    """Create or update ``model``; a renamed model leaves the mirror under its old name."""
    with transaction.atomic():
        previous = None
        if not model._state.adding:
            previous = Model.objects.filter(pk=model.pk).values_list("name", flat=True).first()
        created = model._state.adding
        before, after = trail.diff(model)
        model.save()
        if after:
            trail.record(
                action="model.created" if created else "model.changed",
                target=model,
                summary=f"model {model.name} {'registered' if created else 'changed'}",
                before=None if created else before,
                after=after,
            )
        manifests.ensure_local(model=model)

        def write() -> None:
            if previous and previous != model.name:
                mirror.unpublish_model(previous)
            mirror.publish_model(model)

        transaction.on_commit(write)
    return model


def delete_model(*, model: Model) -> None:
    """Delete ``model`` (its deployments and prices protect it while they exist)."""
    name = model.name
    with transaction.atomic():
        trail.record(
            action="model.deleted", target=model, summary=f"model {name} deleted", before={"name": name}
        )
        model.delete()
        transaction.on_commit(lambda: mirror.unpublish_model(name))


def add_price(*, price: Price) -> Price:
    """Save a new price (prices are append-only); one already in effect is charged at once."""
    with transaction.atomic():
        price.clean()
        price.save()
        trail.record(
            action="price.added",
            target=price,
            summary=f"new price for {price.adapter.served_name if price.adapter_id else price.model.name}",
            after=trail.fields(
                price,
                (
                    "model_id",
                    "adapter_id",
                    "input_per_million",
                    "output_per_million",
                    "cached_input_per_million",
                    "flex_percent",
                    "priority_percent",
                    "batch_percent",
                    "currency",
                    "effective_from",
                ),
            ),
        )
        if price.adapter_id is not None:
            adapter = price.adapter
            transaction.on_commit(lambda: adapters.publish(adapter))
        else:
            publish(model=price.model)
    return price
