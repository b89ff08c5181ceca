"""Tier prices in the registry: the mirror carries each tier's effective percent, the admin and the
API show and validate them, the console's models page lists the tier prices that differ."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from berth.redis import names
from billing.spend import republish_prices
from contract import spend
from models_registry import adapters, catalog, mirror
from models_registry.models import Price
from tests.factories import TenantFactory, member
from tests.registry.adapter_files import write_adapter
from tests.registry.factories import ModelFactory, PriceFactory, priced_model

pytestmark = pytest.mark.django_db(transaction=True)

PERCENT_FIELDS = ("price_percent_flex", "price_percent_priority", "price_percent_batch")


def percents(redis_client, name: str) -> tuple:
    return tuple(redis_client.hmget(names().model(name), PERCENT_FIELDS))


def add_price(model, **fields) -> Price:
    return catalog.add_price(
        price=Price(
            model=model,
            input_per_million=Decimal("0.20"),
            output_per_million=Decimal("0.80"),
            effective_from=fields.pop("effective_from", timezone.now() - timedelta(seconds=1)),
            **fields,
        )
    )


def test_the_mirror_carries_the_effective_percents_of_the_price_in_effect(redis_client, settings):
    model = ModelFactory(name="tp-chat")
    assert percents(redis_client, "tp-chat") == (None, None, None)  # no price: the gateway's defaults
    add_price(model)
    assert percents(redis_client, "tp-chat") == ("50", "200", "50")
    add_price(model, flex_percent=Decimal("37.50"), batch_percent=Decimal("0"))
    assert percents(redis_client, "tp-chat") == ("37.5", "200", "0")
    # What the gateway computes from them: a flex request at 37.5 % of its cost.
    entry = redis_client.hgetall(names().model("tp-chat"))
    assert spend.tier_percent("flex", entry) == 3_750
    assert spend.tier_percent("default", entry) == spend.FULL_PERCENT
    # The operator's defaults apply to a row without its own percent.
    settings.TIER_PRICE_PERCENT = {"flex": Decimal(60), "priority": Decimal(250), "batch": Decimal(40)}
    add_price(model)
    assert percents(redis_client, "tp-chat") == ("60", "250", "40")


def test_a_price_whose_percents_took_effect_unseen_is_republished(redis_client):
    model = ModelFactory(name="tp-later")
    add_price(model, effective_from=timezone.now() - timedelta(minutes=5))
    # A price that differs from the mirrored one only in a percent, whose write was lost.
    PriceFactory(
        model=model,
        input_per_million=Decimal("0.20"),
        output_per_million=Decimal("0.80"),
        priority_percent=Decimal("300"),
        effective_from=timezone.now() - timedelta(seconds=1),
    )
    redis_client.hset(names().model("tp-later"), "price_percent_priority", "200")
    assert republish_prices() == ["tp-later"]
    assert percents(redis_client, "tp-later") == ("50", "300", "50")
    assert republish_prices() == []


def test_an_adapters_entry_carries_its_own_prices_percents(settings, tmp_path):
    settings.ADAPTER_ALLOWED_SOURCES = [f"{tmp_path}/"]
    priced_model("tp-base", "0.10", "0.40")
    acme = TenantFactory(slug="tp-acme")
    adapter = adapters.create_adapter(
        tenant=acme, name="tuned", base_model="tp-base", source=str(write_adapter(tmp_path / "a"))
    )
    catalog.add_price(
        price=Price(
            adapter=adapter,
            input_per_million=Decimal("0.30"),
            output_per_million=Decimal("0.90"),
            priority_percent=Decimal("175.25"),
            effective_from=timezone.now(),
        )
    )
    entry = mirror.adapter_entry(adapter)
    assert [entry[f] for f in PERCENT_FIELDS] == ["50", "175.25", "50"]


@pytest.mark.parametrize("value", [Decimal("-1"), Decimal("1000.01"), Decimal("5000")])
def test_a_percent_outside_0_to_1000_is_refused(value):
    price = Price(
        model=ModelFactory(), input_per_million=Decimal(1), output_per_million=Decimal(1), flex_percent=value
    )
    with pytest.raises(ValidationError) as caught:
        price.full_clean()
    assert "flex_percent" in caught.value.message_dict


def test_the_admin_adds_a_price_with_percents_and_refuses_a_bad_one(admin_client, redis_client):
    model = ModelFactory(name="tp-admin")
    form = {
        "model": str(model.pk),
        "input_per_million": "3",
        "output_per_million": "4",
        "flex_percent": "45",
        "priority_percent": "1001",
        "currency": "USD",
        "effective_from_0": "2025-01-01",
        "effective_from_1": "00:00:00",
    }
    response = admin_client.post("/admin/models_registry/price/add/", form)
    assert response.status_code == 200
    assert "priority_percent" in response.context["adminform"].form.errors
    assert not Price.objects.filter(model=model).exists()
    response = admin_client.post("/admin/models_registry/price/add/", {**form, "priority_percent": "250"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert percents(redis_client, "tp-admin") == ("45", "250", "50")
    listing = admin_client.get("/admin/models_registry/price/").content.decode()
    assert "45 / 250 / 50 (default)" in listing
    # The model's inline offers the percents too.
    page = admin_client.get(f"/admin/models_registry/model/{model.pk}/change/").content.decode()
    assert "flex_percent" in page and "batch_percent" in page


def test_the_api_and_the_console_show_the_tier_prices(client):
    model = priced_model("tp-listed", "0.10", "0.40")
    PriceFactory(
        model=model,
        input_per_million=Decimal("0.10"),
        output_per_million=Decimal("0.40"),
        flex_percent=Decimal("100"),
        effective_from=timezone.now() - timedelta(minutes=1),
    )
    tenant = TenantFactory()
    api = APIClient()
    api.force_login(member(tenant, "member"))
    body = api.get("/api/v1/models").json()
    items = body["results"] if isinstance(body, dict) else body
    (item,) = [m for m in items if m["name"] == "tp-listed"]
    price = item["price"]
    assert (price["flex_percent"], price["priority_percent"], price["batch_percent"]) == (
        "100.00",
        "200.00",
        "50.00",
    )
    tiers = {t["tier"]: t for t in price["tiers"]}
    assert Decimal(tiers["priority"]["output_per_million"]) == Decimal("0.80")
    assert Decimal(tiers["batch"]["input_per_million"]) == Decimal("0.05")

    client.force_login(member(tenant, "member"))
    client.post("/switch/", {"tenant": str(tenant.pk)})
    html = client.get("/models/").content.decode()
    row = html.split("<code>tp-listed</code>")[1].split("</tr>")[0]
    # Flex is at 100 % on this row: the same as default, so not listed; priority and batch are.
    assert "flex" not in row
    assert "priority $0.20 / $0.80" in row and "batch $0.05 / $0.20" in row
