"""Registering models: from a local folder as is, or from the Hugging Face Hub into the cache.

Every pull records a manifest of the files (``models_registry.manifests``): node agents verify
the folder against it before an engine starts. For a Hub model the manifest pins the snapshot's
commit, whatever branch or tag was asked for.

Downloads go to the shared cache (``settings.HF_CACHE_DIR``: ``BERTH_DATA_DIR/hf-cache`` unless
``HF_HOME`` is set, in which case the Hub's own default applies) so that every node agent on the
machine and the engines (``download_dir``) reuse one copy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from django.conf import settings
from django.db import transaction

from models_registry import catalog, manifests
from models_registry.constants import SourceKind, Task
from models_registry.models import Model


class PullError(Exception):
    """The model could not be fetched or registered; the message says why, for a person."""


def default_name(source: str) -> str:
    tail = source.rstrip("/").rsplit("/", 1)[-1].lower()
    return re.sub(r"[^a-z0-9._-]+", "-", tail).strip("-._")[:100] or "model"


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def download(repo_id: str, *, revision: str | None = None) -> Path:
    """Fetch a snapshot (with the Hub's progress bars) and return its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=settings.HF_CACHE_DIR,
            endpoint=settings.HF_ENDPOINT,
            etag_timeout=settings.HF_ETAG_TIMEOUT,
        )
    except LocalEntryNotFoundError as exc:
        raise PullError(
            f"Could not download {repo_id!r} from {settings.HF_ENDPOINT or 'huggingface.co'}: the Hub is "
            f"unreachable (no network?) and the model is not in the cache {settings.HF_CACHE_DIR}. "
            "Copy the model's folder onto this machine and run `manage.py pull_model <folder>` instead."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise PullError(f"Could not download {repo_id!r}: {exc}") from exc
    return Path(folder)


def register(
    *,
    source: str,
    source_kind: str,
    name: str | None = None,
    revision: str = "",
    task: str | None = None,
    folder: Path | None = None,
) -> Model:
    """Create or update the registry entry for a model (idempotent by name), with the manifest of
    ``folder`` as it is now."""
    config = _read_config(folder) if folder else {}
    context = config.get("max_position_embeddings")
    fields = {
        "source": source,
        "source_kind": source_kind,
        "revision": revision or "",
        "task": task or Task.CHAT,
    }
    if isinstance(context, int) and context > 0:
        fields["context_length"] = context
    name = name or default_name(source)
    with transaction.atomic():
        model = Model.objects.select_for_update().filter(name=name).first() or Model(name=name)
        for field, value in fields.items():
            setattr(model, field, value)
        model.full_clean()
        catalog.save_model(model=model)
        if folder is not None:
            # A Hub snapshot folder is named after its commit: pin it, not the branch asked for.
            pinned = folder.name if source_kind == SourceKind.HUGGINGFACE else ""
            manifests.record_folder(model=model, folder=folder, source=source, revision=pinned)
    return model


def pull_model(
    *, source: str, name: str | None = None, revision: str | None = None, task: str | None = None
) -> Model:
    local = Path(source).expanduser()
    if local.is_dir():
        local = local.resolve()
        return register(source=str(local), source_kind=SourceKind.LOCAL, name=name, task=task, folder=local)
    if source.startswith(("/", ".", "~")):
        raise PullError(f"{source} is not a folder.")
    folder = download(source, revision=revision)
    return register(
        source=source,
        source_kind=SourceKind.HUGGINGFACE,
        name=name,
        revision=revision or "",
        task=task,
        folder=folder,
    )
