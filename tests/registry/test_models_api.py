"""GET /api/v1/models: public models plus the tenant's private ones, with current prices."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from models_registry.constants import Visibility
from models_registry.models import Model
from tests.factories import TenantFactory, member
from tests.registry.factories import ModelFactory, PriceFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    tenant_a, tenant_b = TenantFactory(), TenantFactory()
    public = ModelFactory(name="llama-3.1-8b-instruct")
    private_a = ModelFactory(name="a-secret", visibility=Visibility.PRIVATE)
    private_a.allowed_tenants.add(tenant_a)
    private_b = ModelFactory(name="b-secret", visibility=Visibility.PRIVATE)
    private_b.allowed_tenants.add(tenant_b)
    return {"a": tenant_a, "b": tenant_b, "public": public, "private_a": private_a, "private_b": private_b}


def client_for(tenant):
    client = APIClient()
    client.force_login(member(tenant))
    return client


def test_it_lists_public_and_own_private_models(world):
    response = client_for(world["a"]).get("/api/v1/models")
    assert response.status_code == 200
    assert [m["name"] for m in response.json()["results"]] == ["a-secret", "llama-3.1-8b-instruct"]


def test_it_hides_another_tenants_private_model(world):
    client = client_for(world["b"])
    names = [m["name"] for m in client.get("/api/v1/models").json()["results"]]
    assert "a-secret" not in names
    assert client.get("/api/v1/models/a-secret").status_code == 404
    assert client.get("/api/v1/models/b-secret").status_code == 200


def test_it_returns_404_for_unknown_models(world):
    assert client_for(world["a"]).get("/api/v1/models/nope").status_code == 404


def test_it_shows_the_price_in_effect(world):
    now = timezone.now()
    PriceFactory(
        model=world["public"], input_per_million=Decimal("1.00"), effective_from=now - timedelta(days=10)
    )
    PriceFactory(
        model=world["public"], input_per_million=Decimal("2.00"), effective_from=now - timedelta(days=1)
    )
    PriceFactory(
        model=world["public"], input_per_million=Decimal("9.00"), effective_from=now + timedelta(days=5)
    )
    body = client_for(world["a"]).get("/api/v1/models/llama-3.1-8b-instruct").json()
    assert body["price"]["input_per_million"] == "2.000000"
    assert body["price"]["currency"] == "USD"


def test_it_lists_models_in_a_constant_number_of_queries(world, django_assert_max_num_queries):
    for model in Model.objects.all():
        PriceFactory(model=model)
    client = client_for(world["a"])
    client.get("/api/v1/models")  # warm the session/tenant lookups
    with django_assert_max_num_queries(8):
        assert client.get("/api/v1/models").status_code == 200


def test_it_refuses_anonymous_requests(world):
    assert APIClient().get("/api/v1/models").status_code in (401, 403)


def test_visible_to_without_tenant_is_empty(world):
    assert list(Model.objects.visible_to(None)) == []
