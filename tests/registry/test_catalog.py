"""The catalog: every change to a model or its prices reaches the gateway's copy after the commit,
from the service functions and from the admin that calls them."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from berth.redis import names
from models_registry import catalog, mirror
from models_registry.constants import SourceKind, Visibility
from models_registry.models import Model, Price
from tests.factories import TenantFactory
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db(transaction=True)


def mirrored(redis_client, name: str) -> dict[str, str]:
    return redis_client.hgetall(names().model(name))


def listed(redis_client) -> set[str]:
    return redis_client.smembers(names().models())


def new_model(name: str, **fields) -> Model:
    return Model(name=name, source_kind=SourceKind.LOCAL, source="/models/tiny", **fields)


def test_a_saved_model_is_published_and_a_renamed_one_leaves_its_old_name(redis_client):
    model = catalog.save_model(model=new_model("cat-first", context_length=4096))
    assert mirrored(redis_client, "cat-first")["context_length"] == "4096"
    assert "cat-first" in listed(redis_client)

    model.name = "cat-renamed"
    catalog.save_model(model=model)
    assert mirrored(redis_client, "cat-first") == {}
    assert mirrored(redis_client, "cat-renamed")["served_name"] == "cat-renamed"
    assert "cat-first" not in listed(redis_client) and "cat-renamed" in listed(redis_client)


def test_nothing_reaches_redis_when_the_transaction_rolls_back(redis_client):
    with pytest.raises(RuntimeError), transaction.atomic():
        catalog.save_model(model=new_model("cat-rolled-back"))
        raise RuntimeError("boom")
    assert mirrored(redis_client, "cat-rolled-back") == {}
    assert not Model.objects.filter(name="cat-rolled-back").exists()


def test_a_price_in_effect_is_charged_at_once(redis_client):
    model = ModelFactory(name="cat-priced")
    assert "price_input_micros" not in mirrored(redis_client, "cat-priced")
    catalog.add_price(
        price=Price(
            model=model,
            input_per_million=Decimal("0.15"),
            output_per_million=Decimal("0.60"),
            effective_from=timezone.now() - timedelta(seconds=1),
        )
    )
    entry = mirrored(redis_client, "cat-priced")
    assert (entry["price_input_micros"], entry["price_output_micros"]) == ("150000", "600000")


def test_a_deleted_model_leaves_the_mirror(redis_client):
    model = ModelFactory(name="cat-deleted")
    assert mirrored(redis_client, "cat-deleted")
    catalog.delete_model(model=model)
    assert mirrored(redis_client, "cat-deleted") == {} and "cat-deleted" not in listed(redis_client)


def test_a_bare_orm_save_is_not_mirrored_until_the_resync(redis_client):
    """One style: the catalog mirrors, not a signal on every save (the periodic resync heals)."""
    model = ModelFactory(name="cat-orm", visibility=Visibility.PUBLIC)
    model.visibility = Visibility.PRIVATE
    model.save()
    assert mirrored(redis_client, "cat-orm")["visibility"] == Visibility.PUBLIC
    mirror.resync()
    assert mirrored(redis_client, "cat-orm")["visibility"] == Visibility.PRIVATE


def _model_form(name: str, **overrides) -> dict:
    form = {
        "name": name,
        "source_kind": SourceKind.LOCAL,
        "source": "/models/tiny",
        "revision": "",
        "task": "chat",
        "context_length": "",
        "dtype": "",
        "quantization": "",
        "gpu_memory_gb": "0",
        "tensor_parallel_size": "1",
        "engine_args": "[]",
        "visibility": Visibility.PRIVATE,
        "adapter_surcharge_percent": "0",
        "allowed_tenants": [],
        "prices-TOTAL_FORMS": "0",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    }
    return form | overrides


def test_the_admin_publishes_a_model_its_tenants_and_inline_price_and_unpublishes_on_delete(
    admin_client, redis_client
):
    tenant = TenantFactory()
    form = _model_form(
        "cat-admin",
        allowed_tenants=[str(tenant.pk)],
        **{
            "prices-TOTAL_FORMS": "1",
            "prices-0-input_per_million": "1",
            "prices-0-output_per_million": "2",
            "prices-0-currency": "USD",
            "prices-0-effective_from_0": "2025-01-01",
            "prices-0-effective_from_1": "00:00:00",
        },
    )
    response = admin_client.post("/admin/models_registry/model/add/", form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry = mirrored(redis_client, "cat-admin")
    assert json.loads(entry["tenants"]) == [str(tenant.pk)]
    assert (entry["price_input_micros"], entry["price_output_micros"]) == ("1000000", "2000000")

    model = Model.objects.get(name="cat-admin")
    response = admin_client.post(f"/admin/models_registry/model/{model.pk}/change/", _model_form("cat-admin"))
    assert response.status_code == 302
    assert json.loads(mirrored(redis_client, "cat-admin")["tenants"]) == []  # tenant taken off

    Price.objects.filter(model=model).delete()  # the QuerySet delete skips Price.delete's guard
    response = admin_client.post(f"/admin/models_registry/model/{model.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert mirrored(redis_client, "cat-admin") == {}


def test_the_admin_bulk_delete_unpublishes_every_model(admin_client, redis_client):
    models = [ModelFactory(name=f"cat-bulk-{n}") for n in range(2)]
    response = admin_client.post(
        "/admin/models_registry/model/",
        {"action": "delete_selected", "_selected_action": [str(m.pk) for m in models], "post": "yes"},
    )
    assert response.status_code == 302
    assert not Model.objects.filter(name__startswith="cat-bulk-").exists()
    assert all(mirrored(redis_client, m.name) == {} for m in models)


def test_a_price_added_in_the_admin_is_charged_at_once(admin_client, redis_client):
    model = ModelFactory(name="cat-admin-price")
    response = admin_client.post(
        "/admin/models_registry/price/add/",
        {
            "model": str(model.pk),
            "input_per_million": "3",
            "output_per_million": "4",
            "currency": "USD",
            "effective_from_0": "2025-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry = mirrored(redis_client, "cat-admin-price")
    assert (entry["price_input_micros"], entry["price_output_micros"]) == ("3000000", "4000000")
