"""First run: the default models ``manage.py up`` registers, and that tiny-chat takes adapters."""

from __future__ import annotations

import pytest

from models_registry.models import Deployment
from provisioning.agent import engine_spec
from provisioning.bootstrap import DEFAULT_MODEL_NAME, EMBEDDING_MODEL_NAME, ensure_default_models
from provisioning.engines import build_launch
from provisioning.models import Worker

pytestmark = pytest.mark.django_db


def test_first_run_deploys_tiny_chat_with_lora_on_so_a_tenants_adapter_can_be_called(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    assert "registered" in ensure_default_models()
    chat = Deployment.objects.get(model__name=DEFAULT_MODEL_NAME)
    assert chat.max_loras > 0
    argv = build_launch(engine_spec(Worker(deployment=chat, api_key="k"), host="127.0.0.1", port=1)).argv
    assert argv[argv.index("--max-loras") + 1] == str(chat.max_loras)
    embedding = Deployment.objects.get(model__name=EMBEDDING_MODEL_NAME)
    assert embedding.max_loras == 0  # an embedding model takes no adapter
    assert ensure_default_models() is None  # only on a fresh install
