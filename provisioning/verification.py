"""Verifying a model's files against its manifest before a node agent starts an engine.

The agent calls ``verified_source`` in its start path. A model with a recorded manifest
(``models_registry.ModelManifest``) is checked file by file (``integrity.verify_folder``): a Hub
model's pinned snapshot is fetched into the shared cache first if the node lacks it, and the engine
is then pointed at that verified folder, not at the repo id, so it cannot load another revision.
A model whose registry entry requires a signature (``Model.signature``) must also carry a
``model.sig`` that verifies (``integrity.signing``). On a mismatch the worker fails with the names of the files, an ``integrity`` WorkerEvent (counted
as ``berth_model_verification_failures_total`` by ``provisioning.observability``), an audit entry
(``model.verification_failed``, by the system, naming the node, the worker and the files) and no
engine.

Digests are cached per node (``settings.MODEL_DIGEST_CACHE``) so restarts do not rehash
gigabytes; ``integrity.manifest`` states what that cache does and does not defend against, and
``BERTH_MODEL_VERIFICATION=full`` turns it off. A model without a manifest (registered before
manifests existed, or a Hub model added in the admin and never pulled) starts unverified with a
warning; ``manage.py record_manifest`` records one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from audit import trail
from audit.constants import ActorKind
from integrity import DigestCache, Mismatch, VerificationFailed, verify_folder
from integrity.signing import SignatureError, verify_signature
from models_registry.constants import SourceKind
from models_registry.models import Model, ModelManifest
from provisioning import lifecycle
from provisioning.constants import EventKind, WorkerState
from provisioning.engines.base import EngineSpec
from provisioning.models import Worker

logger = logging.getLogger(__name__)

__all__ = ["Check", "SignatureError", "Verified", "VerificationFailed", "before_start", "verified_source"]


@dataclass(frozen=True)
class Verified:
    folder: str  # what the engine loads
    digest: str
    pinned: bool  # a Hub snapshot: the engine loads ``folder`` instead of the repo id


@dataclass(frozen=True)
class Check:
    ok: bool
    verified: Verified | None = None

    def pin(self, spec: EngineSpec) -> EngineSpec:
        """``spec`` loading exactly the verified snapshot (unchanged for a local folder)."""
        if self.verified is None or not self.verified.pinned:
            return spec
        return dataclasses.replace(spec, source=self.verified.folder, revision=None)


def before_start(worker: Worker) -> Check:
    """Verify the worker's model files; on failure the worker is failed here, with the reason."""
    model = worker.deployment.model
    try:
        return Check(ok=True, verified=verified_source(model))
    except (VerificationFailed, SignatureError) as exc:
        reason = str(exc)
        logger.error("worker %s not started: %s", worker.pk, reason)
        with transaction.atomic():
            lifecycle.record(kind=EventKind.INTEGRITY, message=reason, worker=worker)
            lifecycle.transition(
                worker, WorkerState.FAILED, message=reason, failure_reason=reason, crashed=True
            )
            trail.record(
                action="model.verification_failed",
                actor_kind=ActorKind.SYSTEM,
                target=model,
                summary=f"model {model.name}: {reason}"[:1000],
                after={
                    "worker": str(worker.pk),
                    "node": getattr(worker.node, "name", "") if worker.node_id else "",
                    "files": [m.path for m in getattr(exc, "mismatches", [])][:50],
                    "reason": reason[:1000],
                },
            )
        return Check(ok=False)
    except Exception as exc:  # noqa: BLE001 - a download or read error, reported on the worker
        reason = f"cannot verify the model files of {model.name}: {exc}"
        logger.warning("worker %s not started: %s", worker.pk, reason)
    lifecycle.transition(worker, WorkerState.FAILED, message=reason, failure_reason=reason, crashed=True)
    return Check(ok=False)


def _snapshot(source: str, revision: str) -> Path:
    """The pinned Hub snapshot in the shared cache, downloaded first where this node lacks it."""
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            source,
            revision=revision or None,
            cache_dir=settings.HF_CACHE_DIR,
            endpoint=settings.HF_ENDPOINT,
            etag_timeout=settings.HF_ETAG_TIMEOUT,
        )
    )


def verified_source(model: Model) -> Verified | None:
    """Check ``model``'s folder against its current manifest and, when the registry requires one,
    its signature; None when there is nothing to check.

    Raises ``VerificationFailed`` (its message names every differing file) or ``SignatureError``,
    and ``OSError`` or the Hub's errors when the files cannot be read or fetched.
    """
    manifest = ModelManifest.objects.current_for(model)
    policy = model.signature_policy()
    if manifest is None and policy is None:
        logger.warning("model %s has no manifest: starting it unverified", model.name)
        return None
    if manifest is not None and manifest.source != model.source:
        raise VerificationFailed(
            folder=model.source,
            mismatches=[
                Mismatch(path="source", problem="changed", expected=manifest.source, found=model.source)
            ],
        )
    hub = model.source_kind == SourceKind.HUGGINGFACE
    if hub:
        folder = _snapshot(model.source, manifest.revision if manifest is not None else model.revision)
    else:
        folder = Path(model.source)
    if manifest is not None:
        cache = DigestCache(settings.MODEL_DIGEST_CACHE) if settings.MODEL_VERIFICATION == "cached" else None
        mismatches = verify_folder(folder, manifest.as_manifest(), cache=cache)
        if mismatches:
            raise VerificationFailed(folder=str(folder), mismatches=mismatches)
    if policy is not None:
        verify_signature(folder, policy)
    digest = manifest.digest if manifest is not None else ""
    logger.info(
        "model %s: %s verified (manifest %s, signature %s)",
        model.name,
        folder,
        digest or "none",
        policy.kind if policy else "none",
    )
    return Verified(folder=str(folder), digest=digest, pinned=hub)
