"""pull_model: a local folder is registered as is; a repo id needs the Hub and says so offline."""

import json
import socket

import pytest
from django.core.management import CommandError, call_command

from models_registry.constants import SourceKind, Task
from models_registry.models import Model

pytestmark = pytest.mark.django_db


def test_it_registers_a_local_folder(tmp_path):
    folder = tmp_path / "Tiny-Chat"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    call_command("pull_model", str(folder))
    model = Model.objects.get(name="tiny-chat")
    assert (model.source_kind, model.source, model.task, model.context_length) == (
        SourceKind.LOCAL,
        str(folder),
        Task.CHAT,
        2048,
    )


def test_it_updates_an_existing_entry_by_name(tmp_path):
    call_command("pull_model", str(tmp_path), "--name", "embedder", "--task", "embedding")
    call_command("pull_model", str(tmp_path), "--name", "embedder", "--task", "embedding")
    assert Model.objects.filter(name="embedder", task=Task.EMBEDDING).count() == 1


def test_it_fails_clearly_without_network(settings, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.HF_ENDPOINT = f"http://127.0.0.1:{port}"
    settings.HF_CACHE_DIR = str(tmp_path / "hf-cache")
    settings.HF_ETAG_TIMEOUT = 2
    with pytest.raises(CommandError, match="unreachable \\(no network\\?\\)"):
        call_command("pull_model", "meta-llama/Llama-3.1-8B-Instruct")
    assert not Model.objects.exists()


def test_it_rejects_a_missing_folder():
    with pytest.raises(CommandError, match="is not a folder"):
        call_command("pull_model", "/nonexistent/model")
