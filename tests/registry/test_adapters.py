"""Tenants' LoRA adapters: registration checks, plan limits, prices, the Redis mirror, deletion."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from berth.redis import names
from billing import invoicing
from billing.models import InvoiceLine
from billing.periods import period_containing
from models_registry import adapters, catalog, mirror
from models_registry.constants import AdapterStatus, Visibility
from models_registry.models import LoraAdapter, Price
from tests.billing.usage import record
from tests.factories import TenantFactory
from tests.registry.adapter_files import write_adapter
from tests.registry.factories import ModelFactory, priced_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def allowed(settings, tmp_path):
    root = tmp_path / "adapters"
    root.mkdir()
    settings.ADAPTER_ALLOWED_SOURCES = ["hub:", f"{root}/"]
    settings.ADAPTER_DIR = tmp_path / "fetched"
    return root


@pytest.fixture
def acme():
    return TenantFactory(slug="acme", name="Acme")


@pytest.fixture
def base():
    return priced_model("tiny-chat", "0.10", "0.40", source="/models/tiny")


def create(tenant, folder, name="support-v2", base_model="tiny-chat", **kw):
    return adapters.create_adapter(tenant=tenant, name=name, base_model=base_model, source=str(folder), **kw)


def error_of(excinfo) -> dict:
    return excinfo.value.message_dict


def test_a_folder_adapter_is_checked_at_once_and_ready(allowed, acme, base):
    folder = write_adapter(allowed / "support", rank=16, weight_bytes=10_000)
    adapter = create(acme, folder)
    assert adapter.status == AdapterStatus.READY
    assert adapter.served_name == "acme/support-v2"
    assert (adapter.rank, adapter.visibility, adapter.local_path) == (16, Visibility.PRIVATE, str(folder))
    assert adapter.size_bytes == 10_000 + (folder / "adapter_config.json").stat().st_size


def test_the_adapter_gets_the_bases_price_plus_the_surcharge(allowed, acme, base):
    base.adapter_surcharge_percent = Decimal("25")
    base.save()
    adapter = create(acme, write_adapter(allowed / "support"))
    price = adapter.current_price()
    assert (price.input_per_million, price.output_per_million) == (Decimal("0.125"), Decimal("0.5"))
    assert price.model is None and price.currency == "USD"
    # The base's own price is unchanged.
    assert base.current_price().input_per_million == Decimal("0.10")


def test_a_free_base_gives_a_free_adapter(allowed, acme):
    ModelFactory(name="free-chat")
    adapter = create(acme, write_adapter(allowed / "a"), base_model="free-chat")
    assert adapter.current_price() is None


def test_a_price_belongs_to_exactly_one_of_model_and_adapter(allowed, acme, base):
    adapter = create(acme, write_adapter(allowed / "a"))
    with pytest.raises(IntegrityError), transaction.atomic():
        Price.objects.bulk_create(
            [Price(model=base, adapter=adapter, input_per_million=1, output_per_million=1)]
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        Price.objects.bulk_create([Price(input_per_million=1, output_per_million=1)])


@pytest.mark.parametrize(
    ("files", "field", "message"),
    [
        ({"peft_type": "PREFIX_TUNING"}, "source", "Not a LoRA adapter"),
        ({"rank": 128}, "source", "above your plan's maximum of 64"),
        ({"weight_bytes": 3_000_000}, "source", "above your plan's maximum of 2 MB"),
        ({"base": "someone/other-model"}, "base_model", "trained on 'someone/other-model'"),
    ],
)
def test_bad_adapters_are_refused_with_the_reason(allowed, acme, files, field, message):
    acme.plan.max_adapter_size_mb = 2
    acme.plan.save()
    ModelFactory(name="tiny-chat", source_kind="hf", source="tiny/tiny-chat")
    with pytest.raises(adapters.AdapterError) as excinfo:
        create(acme, write_adapter(allowed / "bad", **files))
    assert message in " ".join(error_of(excinfo)[field])
    assert not LoraAdapter.objects.exists()


def test_the_base_named_in_the_config_may_be_the_bases_repo(allowed, acme):
    ModelFactory(name="tiny-chat", source_kind="hf", source="Tiny/Tiny-Chat")
    assert create(acme, write_adapter(allowed / "ok", base="tiny/tiny-chat")).status == AdapterStatus.READY


def test_a_folder_without_config_or_weights_is_not_an_adapter(allowed, acme, base):
    empty = allowed / "empty"
    empty.mkdir()
    with pytest.raises(adapters.AdapterError, match="no adapter_config.json"):
        create(acme, empty)
    folder = write_adapter(allowed / "noweights")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(adapters.AdapterError, match="No adapter weights"):
        create(acme, folder)


def test_sources_outside_the_operators_prefixes_are_refused(allowed, acme, base, tmp_path, settings):
    outside = write_adapter(tmp_path / "elsewhere")
    for source in (str(outside), f"{allowed}/../elsewhere", "https://example.test/adapters/x"):
        with pytest.raises(adapters.AdapterError) as excinfo:
            create(acme, source)
        assert "not allowed on this server" in error_of(excinfo)["source"][0]
    settings.ADAPTER_ALLOWED_SOURCES = ["hub:berth-org", "https://files.test/adapters"]
    for source in ("someone/adapter", "berth-org-evil/adapter", "https://files.test/adapters-evil/x"):
        with pytest.raises(adapters.AdapterError, match="not allowed"):
            create(acme, source)
    with pytest.raises(adapters.AdapterError, match="not an http\\(s\\) URL"):
        create(acme, "https://files.test/adapters/%2E%2E/secret")
    assert create(acme, "berth-org/adapter", name="from-hub").status == AdapterStatus.PENDING
    assert (
        create(acme, "https://files.test/adapters/x/", name="from-url").source
        == "https://files.test/adapters/x"
    )
    with pytest.raises(adapters.AdapterError, match="not a Hugging Face repo id"):
        create(acme, "not a repo")


def test_a_symlink_out_of_an_allowed_prefix_is_refused(allowed, acme, base, tmp_path):
    (allowed / "link").symlink_to(write_adapter(tmp_path / "secret"))
    with pytest.raises(adapters.AdapterError, match="not allowed"):
        create(acme, allowed / "link")


def test_the_base_must_be_a_visible_text_model(allowed, acme, base):
    folder = write_adapter(allowed / "a")
    ModelFactory(name="embedder", task="embedding")
    other = TenantFactory()
    hidden = ModelFactory(name="their-private", visibility=Visibility.PRIVATE)
    hidden.allowed_tenants.add(other)
    for name, message in (
        ("nope", "There is no model named 'nope'"),
        ("their-private", "There is no model named 'their-private'"),
        ("embedder", "adapters need a chat or completion model"),
    ):
        with pytest.raises(adapters.AdapterError) as excinfo:
            create(acme, folder, base_model=name)
        assert message in error_of(excinfo)["base_model"][0]


@pytest.mark.parametrize("name", ["Support", "acme/support", "", "-x", "a b"])
def test_names_are_lower_case_words(allowed, acme, base, name):
    with pytest.raises(adapters.AdapterError) as excinfo:
        create(acme, write_adapter(allowed / "a"), name=name)
    assert "name" in error_of(excinfo)


def test_names_are_unique_per_tenant_and_free_again_after_delete(allowed, acme, base):
    folder = write_adapter(allowed / "a")
    first = create(acme, folder)
    with pytest.raises(adapters.AdapterError, match="already have an adapter named"):
        create(acme, folder)
    # Another tenant may use the same name: its served name differs.
    assert create(TenantFactory(slug="globex"), folder).served_name == "globex/support-v2"
    adapters.delete_adapter(adapter=first)
    again = create(acme, folder)
    assert again.pk != first.pk and again.served_name == first.served_name
    assert LoraAdapter.objects.get(pk=first.pk).status == AdapterStatus.DELETED


def test_the_plan_limits_the_number_of_adapters(allowed, acme, base):
    acme.plan.max_adapters = 2
    acme.plan.save()
    folder = write_adapter(allowed / "a")
    first = create(acme, folder, name="one")
    create(acme, folder, name="two")
    with pytest.raises(adapters.AdapterError, match="Your plan allows 2 adapters"):
        create(acme, folder, name="three")
    adapters.delete_adapter(adapter=first)
    assert create(acme, folder, name="three").status == AdapterStatus.READY


def test_a_deployments_max_lora_rank_bounds_the_rank(allowed, acme, base, monkeypatch):
    monkeypatch.setattr(adapters, "deployment_rank_limit", lambda model: 8)
    with pytest.raises(adapters.AdapterError, match="maximum LoRA rank of 8"):
        create(acme, write_adapter(allowed / "a", rank=16))


def test_the_mirror_entry_is_the_contracts(
    allowed, acme, base, redis_client, django_capture_on_commit_callbacks
):
    base.context_length = 2048
    base.save()
    with django_capture_on_commit_callbacks(execute=True):
        adapter = create(acme, write_adapter(allowed / "a", rank=8))
    entry = redis_client.hgetall(names().model("acme/support-v2"))
    assert entry == {
        "served_name": "acme/support-v2",
        "task": "chat",
        "visibility": "private",
        "tenants": json.dumps([str(acme.pk)]),
        "created": str(int(adapter.created_at.timestamp())),
        "owned_by": "acme",
        "context_length": "2048",
        "price_input_micros": "100000",
        "price_output_micros": "400000",
        "price_cached_input_micros": "50000",  # half the input price: BERTH_CACHED_INPUT_FRACTION
        "price_percent_flex": "50",  # contract.tiers.DEFAULT_PRICE_PERCENT: the row sets none
        "price_percent_priority": "200",
        "price_percent_batch": "50",
        "parent": "tiny-chat",
        "adapter_id": str(adapter.pk),
        "adapter_source": str(allowed / "a"),
        "adapter_revision": "",
        "adapter_rank": "8",
        "manifest_digest": adapter.manifest_digest,
        "adapter_manifest": entry["adapter_manifest"],
    }
    assert adapter.manifest_digest.startswith("sha256:")
    assert "acme/support-v2" in redis_client.smembers(names().models())
    assert "parent" not in redis_client.hgetall(names().model("tiny-chat"))


def test_staff_make_an_adapter_public_and_prices_republish(
    allowed, acme, base, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        adapter = create(acme, write_adapter(allowed / "a"))
        adapter.visibility = Visibility.PUBLIC
        adapters.save_adapter(adapter=adapter)
        catalog.add_price(
            price=Price(adapter=adapter, input_per_million=Decimal("2"), output_per_million=Decimal("3"))
        )
    entry = redis_client.hgetall(names().model("acme/support-v2"))
    assert (entry["visibility"], entry["tenants"]) == ("public", "[]")
    assert (entry["price_input_micros"], entry["price_output_micros"]) == ("2000000", "3000000")


def test_deleting_unpublishes_and_resync_heals(
    allowed, acme, base, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        adapter = create(acme, write_adapter(allowed / "a"))
    redis_client.delete(names().model("acme/support-v2"))
    mirror.resync()
    assert redis_client.hget(names().model("acme/support-v2"), "parent") == "tiny-chat"
    with django_capture_on_commit_callbacks(execute=True):
        adapters.delete_adapter(adapter=adapter)
    assert not redis_client.exists(names().model("acme/support-v2"))
    assert "acme/support-v2" not in redis_client.smembers(names().models())
    # A pending or failed adapter is never published, and resync removes a stray entry.
    redis_client.hset(names().model("acme/support-v2"), "served_name", "acme/support-v2")
    redis_client.sadd(names().models(), "acme/support-v2")
    assert mirror.resync()["removed"] == 1
    assert not redis_client.exists(names().model("acme/support-v2"))


def test_an_adapters_usage_is_invoiced_at_the_adapters_price(allowed, acme, base):
    base.adapter_surcharge_percent = Decimal("50")
    base.save()
    adapter = create(acme, write_adapter(allowed / "a"))
    now = timezone.now()
    record(acme, "acme/support-v2", now, 1_000_000, 2_000_000)
    record(acme, "tiny-chat", now, 1_000_000, 0)
    # A deleted adapter's usage is still billed at its price.
    adapters.delete_adapter(adapter=adapter)
    period = period_containing(now)
    result = invoicing.close_period(tenant=acme, period=period, now=period.end + timedelta(days=1))
    lines = {
        (line.model, line.kind): (line.tokens, line.unit_price_per_million, line.amount)
        for line in InvoiceLine.objects.filter(invoice=result.invoice)
    }
    assert lines[("acme/support-v2", "input")] == (1_000_000, Decimal("0.15"), Decimal("0.15"))
    assert lines[("acme/support-v2", "output")] == (2_000_000, Decimal("0.6"), Decimal("1.20"))
    assert lines[("tiny-chat", "input")] == (1_000_000, Decimal("0.10"), Decimal("0.10"))
    assert result.invoice.total == Decimal("1.45")


def test_a_price_that_took_effect_unseen_is_republished(
    allowed, acme, base, redis_client, django_capture_on_commit_callbacks
):
    from billing.spend import republish_prices

    with django_capture_on_commit_callbacks(execute=True):
        adapter = create(acme, write_adapter(allowed / "a"))
    key = names().model("acme/support-v2")
    assert redis_client.hget(key, "price_input_micros") == "100000"
    assert republish_prices() == []
    # As a price scheduled earlier that has just taken effect: saved without publishing.
    Price(adapter=adapter, input_per_million=Decimal("5"), output_per_million=Decimal("6")).save()
    assert republish_prices() == ["acme/support-v2"]
    assert redis_client.hget(key, "price_input_micros") == "5000000"


def test_staff_set_the_adapter_limits_in_the_plan_admin(admin_client, allowed, acme, base):
    plan = acme.plan
    form = {
        "name": plan.name,
        "slug": plan.slug,
        "currency": "USD",
        "is_default": "on",
        "max_adapters": "1",
        "max_adapter_rank": "4",
        "max_adapter_size_mb": "",
        "priority_band": "standard",
        "fair_share_weight": "1",
    }
    page = admin_client.get(f"/admin/tenants/plan/{plan.pk}/change/").content.decode()
    assert 'name="max_adapter_rank"' in page
    assert admin_client.post(f"/admin/tenants/plan/{plan.pk}/change/", form).status_code == 302
    acme.refresh_from_db()
    assert (acme.plan.max_adapters, acme.plan.max_adapter_rank, acme.plan.max_adapter_size_mb) == (1, 4, None)
    with pytest.raises(adapters.AdapterError, match="maximum of 4"):
        create(acme, write_adapter(allowed / "a", rank=8))


def test_staff_make_an_adapter_public_in_the_admin(
    admin_client, allowed, acme, base, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        adapter = create(acme, write_adapter(allowed / "a"))
    url = f"/admin/models_registry/loraadapter/{adapter.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert "acme/support-v2" in page and 'name="visibility"' in page
    form = {
        "base_model": str(base.pk),
        "visibility": "public",
        "prices-TOTAL_FORMS": "0",
        "prices-INITIAL_FORMS": str(adapter.prices.count()),
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    }
    for n, price in enumerate(adapter.prices.all()):
        form[f"prices-{n}-id"] = str(price.pk)
        form[f"prices-{n}-adapter"] = str(adapter.pk)
    form["prices-TOTAL_FORMS"] = form["prices-INITIAL_FORMS"]
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert redis_client.hget(names().model("acme/support-v2"), "visibility") == "public"
    assert admin_client.get("/admin/models_registry/loraadapter/add/").status_code == 403
