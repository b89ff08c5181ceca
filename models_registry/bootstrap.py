"""First run on a fresh install: register a small CPU model so ``manage.py up`` serves something.

Only when the registry is empty. The model is created offline by ``workers.tiny_model`` (the CPU
engine's generator); when that module is not available nothing is registered.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import transaction

from models_registry.constants import Engine, SourceKind, Task
from models_registry.models import Deployment, Model, Price

logger = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "tiny-chat"


def ensure_default_models() -> str | None:
    """Register the tiny chat model with a CPU deployment; a line for the log, or None."""
    if Model.objects.exists():
        return None
    try:
        from workers.tiny_model import create_tiny_model
    except ImportError:
        return "no models registered (register one with manage.py pull_model <repo-or-path>)"
    folder = Path(settings.DATA_DIR) / "models" / DEFAULT_MODEL_NAME
    if not (folder / "config.json").exists():
        create_tiny_model(folder)
    with transaction.atomic():
        model = Model.objects.create(
            name=DEFAULT_MODEL_NAME,
            source_kind=SourceKind.LOCAL,
            source=str(folder),
            task=Task.CHAT,
            context_length=2048,
        )
        Deployment.objects.create(
            model=model, engine=Engine.CPU, min_replicas=0, max_replicas=2, desired_replicas=1
        )
        Price.objects.create(model=model, input_per_million=Decimal("0"), output_per_million=Decimal("0"))
    return f"registered {DEFAULT_MODEL_NAME} ({folder}) with one CPU replica"
