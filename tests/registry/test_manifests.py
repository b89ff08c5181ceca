"""Model manifests: recorded when a model is pulled or a local folder registered, published as
``manifest_digest`` in the gateway's mirror, and replaced only by a new row."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from berth.redis import names
from integrity import manifest_for_folder
from models_registry import catalog, pull
from models_registry.constants import SourceKind
from models_registry.models import Model, ModelManifest

pytestmark = pytest.mark.django_db(transaction=True)


def model_folder(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    (path / "model.safetensors").write_bytes(b"\x01" * 4096)
    return path


def test_pulling_a_folder_records_its_manifest_and_publishes_the_digest(tmp_path, redis_client):
    folder = model_folder(tmp_path / "tiny")
    call_command("pull_model", str(folder), "--name", "man-tiny")
    model = Model.objects.get(name="man-tiny")
    row = ModelManifest.objects.current_for(model)
    assert row is not None
    assert {f["path"] for f in row.files} == {"config.json", "model.safetensors"}
    assert (row.file_count, row.total_bytes, row.source) == (
        2,
        4096 + len((folder / "config.json").read_text()),
        str(folder),
    )
    assert row.digest == manifest_for_folder(folder, source=str(folder)).digest
    assert redis_client.hget(names().model("man-tiny"), "manifest_digest") == row.digest


def test_pulling_again_adds_a_manifest_only_when_the_files_changed(tmp_path, redis_client):
    folder = model_folder(tmp_path / "tiny")
    call_command("pull_model", str(folder), "--name", "man-again")
    call_command("pull_model", str(folder), "--name", "man-again")
    model = Model.objects.get(name="man-again")
    assert ModelManifest.objects.filter(model=model).count() == 1
    first = ModelManifest.objects.current_for(model).digest
    (folder / "model.safetensors").write_bytes(b"\x02" * 4096)
    call_command("pull_model", str(folder), "--name", "man-again")
    assert ModelManifest.objects.filter(model=model).count() == 2
    latest = ModelManifest.objects.current_for(model).digest
    assert latest != first
    assert redis_client.hget(names().model("man-again"), "manifest_digest") == latest


def test_a_hub_pull_pins_the_snapshot_commit(tmp_path, monkeypatch, redis_client):
    snapshot = model_folder(tmp_path / "hf" / "models--org--tiny" / "snapshots" / "0a1b2c3d4e5f")
    monkeypatch.setattr(pull, "download", lambda repo_id, revision=None: snapshot)
    model = pull.pull_model(source="org/tiny", revision="main")
    row = ModelManifest.objects.current_for(model)
    assert (model.revision, row.source, row.revision) == ("main", "org/tiny", "0a1b2c3d4e5f")


def test_a_local_model_saved_through_the_catalog_gets_a_manifest(tmp_path, redis_client):
    folder = model_folder(tmp_path / "admin-made")
    model = catalog.save_model(
        model=Model(name="man-admin", source_kind=SourceKind.LOCAL, source=str(folder))
    )
    assert ModelManifest.objects.current_for(model).digest == manifest_for_folder(folder).digest
    # A folder that is not on this host: registered, no manifest, an empty digest in the mirror.
    elsewhere = catalog.save_model(
        model=Model(name="man-elsewhere", source_kind=SourceKind.LOCAL, source=str(tmp_path / "absent"))
    )
    assert ModelManifest.objects.current_for(elsewhere) is None
    assert redis_client.hget(names().model("man-elsewhere"), "manifest_digest") == ""


def test_manifests_are_append_only(tmp_path):
    folder = model_folder(tmp_path / "tiny")
    call_command("pull_model", str(folder), "--name", "man-frozen")
    row = ModelManifest.objects.get(model__name="man-frozen")
    row.digest = "sha256:00"
    with pytest.raises(Exception, match="append-only"):
        row.save()


def test_record_manifest_accepts_the_files_as_they_are(tmp_path, capsys):
    folder = model_folder(tmp_path / "tiny")
    call_command("pull_model", str(folder), "--name", "man-accept")
    (folder / "extra.safetensors").write_bytes(b"\x00")
    call_command("record_manifest", "man-accept")
    row = ModelManifest.objects.current_for(Model.objects.get(name="man-accept"))
    assert "extra.safetensors" in {f["path"] for f in row.files}
    assert row.digest in capsys.readouterr().out
    with pytest.raises(CommandError, match="no model named"):
        call_command("record_manifest", "nope")


def test_the_admin_shows_the_manifests_read_only(tmp_path, admin_client):
    folder = model_folder(tmp_path / "tiny")
    call_command("pull_model", str(folder), "--name", "man-admin-page")
    model = Model.objects.get(name="man-admin-page")
    html = admin_client.get(f"/admin/models_registry/model/{model.pk}/change/").content.decode()
    assert ModelManifest.objects.current_for(model).digest in html
    assert "record_manifest" in html
