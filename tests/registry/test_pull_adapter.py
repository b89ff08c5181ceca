"""pull_adapter: a Hub adapter is fetched (config and weights only), checked, then ready or failed."""

from __future__ import annotations

import functools
import json
import threading
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from berth.redis import names
from models_registry import adapters
from models_registry.constants import AdapterStatus
from models_registry.models import LoraAdapter
from models_registry.tasks import pull_adapter, resync_model_mirror
from tests.factories import TenantFactory
from tests.registry.adapter_files import write_adapter
from tests.registry.factories import priced_model
from tests.registry.fake_hub import FakeHub

pytestmark = pytest.mark.django_db


def lora(rank=8, peft_type="LORA", base="tiny/tiny-chat") -> bytes:
    return json.dumps({"peft_type": peft_type, "r": rank, "base_model_name_or_path": base}).encode()


@pytest.fixture
def hub(settings, tmp_path):
    fake = FakeHub().start()
    settings.HF_ENDPOINT = fake.url
    settings.HF_ETAG_TIMEOUT = 5
    settings.ADAPTER_ALLOWED_SOURCES = ["hub:"]
    settings.ADAPTER_DIR = tmp_path / "fetched"
    yield fake
    fake.stop()


@pytest.fixture
def acme():
    priced_model("tiny-chat", "0.10", "0.40", source_kind="hf", source="tiny/tiny-chat")
    return TenantFactory(slug="acme")


def register(tenant, source, name="support-v2", revision=""):
    adapter = adapters.create_adapter(
        tenant=tenant, name=name, base_model="tiny-chat", source=source, revision=revision
    )
    assert adapter.status == AdapterStatus.PENDING
    return adapter


def test_a_hub_adapter_is_fetched_checked_and_published(
    hub, acme, redis_client, django_capture_on_commit_callbacks
):
    weights = b"\1" * 5000
    hub.add(
        "acme-ml/support-lora",
        {"adapter_config.json": lora(rank=16), "adapter_model.safetensors": weights, "README.md": b"x" * 10},
    )
    adapter = register(acme, "acme-ml/support-lora")
    with django_capture_on_commit_callbacks(execute=True):
        assert pull_adapter(str(adapter.pk)) == AdapterStatus.READY
    adapter.refresh_from_db()
    folder = adapters.fetched_folder(adapter)
    assert (adapter.rank, adapter.local_path) == (16, str(folder))
    assert (folder / "adapter_model.safetensors").read_bytes() == weights
    assert not (folder / "README.md").exists()  # only what an engine loads
    assert sorted(hub.downloads) == [
        "acme-ml/support-lora/adapter_config.json",
        "acme-ml/support-lora/adapter_model.safetensors",
    ]
    entry = redis_client.hgetall(names().model("acme/support-v2"))
    assert (entry["adapter_source"], entry["adapter_rank"], entry["parent"]) == (
        str(folder),
        "16",
        "tiny-chat",
    )
    # Deleting removes the fetched files.
    with django_capture_on_commit_callbacks(execute=True):
        adapters.delete_adapter(adapter=adapter)
    assert not folder.exists()


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        (None, "was not found on the Hub"),
        ({"config.json": b"{}"}, "Not a PEFT adapter"),
        (
            {"adapter_config.json": lora(peft_type="IA3"), "adapter_model.safetensors": b"1"},
            "Not a LoRA adapter",
        ),
        (
            {"adapter_config.json": lora(rank=256), "adapter_model.safetensors": b"1"},
            "above your plan's maximum of 64",
        ),
        (
            {"adapter_config.json": lora(base="other/base"), "adapter_model.safetensors": b"1"},
            "trained on 'other/base'",
        ),
        (
            {"adapter_config.json": lora(), "adapter_model.safetensors": b"1" * 2_000_001},
            "above your plan's maximum of 2 MB",
        ),
    ],
)
def test_a_bad_hub_adapter_fails_with_the_reason(hub, acme, redis_client, files, reason):
    acme.plan.max_adapter_size_mb = 2
    acme.plan.save()
    if files is not None:
        hub.add("acme-ml/bad", files)
    adapter = register(acme, "acme-ml/bad")
    assert pull_adapter(str(adapter.pk)) == AdapterStatus.FAILED
    adapter.refresh_from_db()
    assert reason in adapter.status_reason
    assert not redis_client.exists(names().model("acme/support-v2"))
    assert not any(name.endswith("safetensors") for name in hub.downloads)  # refused before downloading


def test_an_unreachable_hub_fails_the_adapter_clearly(hub, acme, settings):
    settings.HF_ENDPOINT = "http://127.0.0.1:9"
    adapter = register(acme, "acme-ml/anything")
    assert pull_adapter(str(adapter.pk)) == AdapterStatus.FAILED
    adapter.refresh_from_db()
    assert "acme-ml/anything" in adapter.status_reason


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_url_adapter_is_fetched_under_an_allowed_prefix(hub, acme, file_server, settings):
    root, url = file_server
    write_adapter(root / "adapters" / "support", rank=4, base="tiny/tiny-chat")
    settings.ADAPTER_ALLOWED_SOURCES = [f"{url}/adapters/"]
    adapter = register(acme, f"{url}/adapters/support/")
    assert adapter.source == f"{url}/adapters/support"
    assert pull_adapter(str(adapter.pk)) == AdapterStatus.READY
    adapter.refresh_from_db()
    assert adapter.rank == 4
    assert (adapters.fetched_folder(adapter) / "adapter_model.safetensors").exists()
    missing = register(acme, f"{url}/adapters/nothing", name="other")
    assert pull_adapter(str(missing.pk)) == AdapterStatus.FAILED
    missing.refresh_from_db()
    assert "HTTP 404" in missing.status_reason


def test_a_lost_fetch_is_enqueued_again_by_the_periodic_resync(hub, acme, monkeypatch):
    queued = []
    monkeypatch.setattr(adapters, "_enqueue_pull", queued.append)
    adapter = register(acme, "acme-ml/lost")
    assert resync_model_mirror()["adapter_pulls_retried"] == 0
    LoraAdapter.objects.filter(pk=adapter.pk).update(updated_at=timezone.now() - timedelta(minutes=20))
    assert resync_model_mirror()["adapter_pulls_retried"] == 1
    assert [a.pk for a in queued] == [adapter.pk]
    assert resync_model_mirror()["adapter_pulls_retried"] == 0  # not again at once
