"""Prices are append-only: a newer row supersedes, nothing is edited or deleted."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from models_registry.models import Price
from tests.registry.factories import ModelFactory, PriceFactory

pytestmark = pytest.mark.django_db


def test_it_keeps_history_and_picks_the_price_in_effect():
    model = ModelFactory()
    now = timezone.now()
    old = PriceFactory(model=model, output_per_million=Decimal("3"), effective_from=now - timedelta(days=30))
    new = PriceFactory(model=model, output_per_million=Decimal("2"), effective_from=now - timedelta(days=2))
    assert Price.objects.in_effect(model) == new
    assert Price.objects.in_effect(model, now - timedelta(days=10)) == old
    assert Price.objects.in_effect(model, now - timedelta(days=60)) is None
    assert model.current_price() == new
    assert Price.objects.filter(model=model).count() == 2


def test_it_refuses_to_edit_a_price():
    price = PriceFactory()
    price.input_per_million = Decimal("0.01")
    with pytest.raises(ValidationError):
        price.save()
    price.refresh_from_db()
    assert price.input_per_million == Decimal("0.50")


def test_it_refuses_to_delete_a_price():
    price = PriceFactory()
    with pytest.raises(ValidationError):
        price.delete()
    assert Price.objects.filter(pk=price.pk).exists()


def test_the_admin_offers_no_change_or_delete(admin_client):
    price = PriceFactory()
    response = admin_client.post(
        f"/admin/models_registry/price/{price.pk}/change/",
        {
            "model": price.model_id,
            "input_per_million": "0.01",
            "output_per_million": "0.01",
            "currency": "USD",
        },
    )
    assert response.status_code in (302, 403)
    price.refresh_from_db()
    assert price.input_per_million == Decimal("0.50")
