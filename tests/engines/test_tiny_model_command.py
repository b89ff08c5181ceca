"""``manage.py create_tiny_model``: the control plane's way to write the CPU engine's tiny model."""

from __future__ import annotations

from django.core.management import call_command


def test_the_command_creates_the_model_at_the_given_path(tmp_path, capsys):
    call_command("create_tiny_model", path=tmp_path / "cmd")
    out = capsys.readouterr().out
    assert "Training a 4096-token" in out
    assert str(tmp_path / "cmd") in out
    assert (tmp_path / "cmd" / "model.safetensors").is_file()


def test_the_command_defaults_to_the_data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    call_command("create_tiny_model")
    assert (tmp_path / "models" / "berth-tiny-chat" / "config.json").is_file()
