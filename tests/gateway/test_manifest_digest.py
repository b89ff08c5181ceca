"""``GET /v1/models`` carries each model's ``manifest_digest`` from the registry (the real catalog
and mirror, read by the gateway through the real ``openai`` SDK)."""

from __future__ import annotations

import openai
import pytest

from models_registry.models import ModelManifest
from tests.gateway.conftest import make_key, make_tenant, register_model, set_routes
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db


def test_the_model_list_carries_the_manifest_digest(
    gateway, engines, redis_client, tmp_path, django_capture_on_commit_callbacks
):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x05" * 256)
    with django_capture_on_commit_callbacks(execute=True):
        model = ModelFactory(name="digest-listed", source=str(folder))
    set_routes(redis_client, model.name, engines)
    unverified = register_model(redis_client, engines)  # an entry without a manifest
    digest = ModelManifest.objects.current_for(model).digest
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(make_tenant()), max_retries=0)
    listed = {m.id: m.model_dump() for m in client.models.list()}
    assert listed["digest-listed"]["manifest_digest"] == digest
    assert digest.startswith("sha256:") and len(digest) == 71
    assert listed[unverified]["manifest_digest"] is None
