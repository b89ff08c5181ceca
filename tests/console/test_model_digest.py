"""The console's models page shows each model's manifest digest, for the models the tenant sees."""

from __future__ import annotations

import pytest

from models_registry.constants import Visibility
from models_registry.models import ModelManifest
from tests.factories import TenantFactory, member
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db


def test_the_models_page_shows_the_weights_digest(client, tmp_path):
    public_dir, private_dir = tmp_path / "public", tmp_path / "private"
    for folder, content in ((public_dir, b"\x01"), (private_dir, b"\x02")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(content * 128)
    public = ModelFactory(name="digest-public", source=str(public_dir))
    theirs = TenantFactory()
    private = ModelFactory(name="digest-theirs", source=str(private_dir), visibility=Visibility.PRIVATE)
    private.allowed_tenants.add(theirs)
    ours = TenantFactory()
    client.force_login(member(ours, "member"))
    client.post("/switch/", {"tenant": str(ours.pk)})
    html = client.get("/models/").content.decode()
    assert ModelManifest.objects.current_for(public).digest in html
    assert ModelManifest.objects.current_for(private).digest not in html
