"""Recording model manifests: what a model's folder holds when it is pulled or registered.

``pull_model`` records one after every pull (a Hub snapshot: ``revision`` is the resolved
commit, so every node verifies, and serves, the same snapshot); a local folder saved through
``catalog.save_model`` (the admin, the API, bootstrap) gets one when it has none yet or its source
changed. ``manage.py record_manifest`` records a new one after an operator changed the files on
purpose. Node agents verify against the latest before starting an engine
(``provisioning.verification``). Every new manifest is an audit entry
(``model.manifest_recorded``: the digest before and after, the source and revision), because it
changes what the fleet accepts as the model's weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.db import transaction

from audit import trail
from integrity import Manifest, manifest_for_folder
from models_registry.constants import SourceKind
from models_registry.models import Model, ModelManifest

logger = logging.getLogger(__name__)


def record(*, model: Model, manifest: Manifest, via: str = "") -> ModelManifest:
    """Store ``manifest`` as the model's current one (no new row when the digest is unchanged).

    ``via`` names what recorded it in the audit entry when no person did (``manage.py
    record_manifest``); otherwise the request being served, else the system, is the actor.
    """
    from models_registry import catalog

    with transaction.atomic():
        Model.objects.select_for_update().filter(pk=model.pk).first()  # one recording at a time
        current = ModelManifest.objects.current_for(model)
        if current is not None and current.digest == manifest.digest:
            return current
        data = manifest.as_dict()
        row = ModelManifest.objects.create(
            model=model,
            digest=manifest.digest,
            source=manifest.source,
            revision=manifest.revision,
            files=data["files"],
            file_count=len(manifest.files),
            total_bytes=manifest.total_bytes,
        )
        trail.record(
            action="model.manifest_recorded",
            target=model,
            actor_label=via,
            summary=f"model {model.name}: {len(manifest.files)} files, {manifest.digest}",
            before={"manifest_digest": current.digest if current is not None else ""},
            after={
                "manifest_digest": manifest.digest,
                "source": manifest.source,
                "revision": manifest.revision,
                "file_count": len(manifest.files),
            },
        )
        catalog.publish(model=model)  # the digest is part of the mirror entry
    logger.debug("model %s: manifest %s (%d files)", model.name, manifest.digest, len(manifest.files))
    return row


def record_folder(
    *, model: Model, folder: Path | str, source: str = "", revision: str = "", via: str = ""
) -> ModelManifest:
    return record(
        model=model,
        manifest=manifest_for_folder(folder, source=source or str(folder), revision=revision),
        via=via,
    )


def ensure_local(*, model: Model) -> ModelManifest | None:
    """A local-folder model's manifest, recorded now if it has none for its current source."""
    if model.source_kind != SourceKind.LOCAL:
        return None
    current = ModelManifest.objects.current_for(model)
    if current is not None and current.source == model.source:
        return current
    folder = Path(model.source)
    if not folder.is_dir():
        logger.warning("model %s: %s is not a folder here; no manifest recorded", model.name, folder)
        return None
    return record_folder(model=model, folder=folder)


def current_digest(model: Model) -> str:
    current = ModelManifest.objects.current_for(model)
    return current.digest if current is not None else ""
