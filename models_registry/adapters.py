"""Tenants' LoRA adapters: registering, checking, fetching, pricing, publishing and deleting one.

An adapter is a tenant-owned model served as ``<tenant slug>/<name>`` on a base model's
deployments. Everything that changes one goes through here (console, ``/api/v1/adapters``, the
admin, ``pull_adapter``), so the checks and the Redis mirror are the same whoever asks:

- the operator decides where adapters may come from (``settings.ADAPTER_ALLOWED_SOURCES``:
  ``hub:`` any Hub repo, ``hub:<org>/`` one org's repos, an absolute folder prefix, an
  ``http(s)://`` URL prefix); a tenant never names a file outside them;
- staff limit how many adapters a tenant has, their rank and their size (``tenants.Plan``), and a
  deployment's ``max_lora_rank`` bounds the rank its engines accept;
- the files must be a PEFT LoRA (``adapter_config.json`` with ``peft_type: LORA`` and its
  weights); its ``base_model_name_or_path`` must be the base when both are Hub repo ids.

A folder on the server is checked at once (the caller gets the error); a Hub repo or a URL is
fetched by the ``models_registry.tasks.pull_adapter`` task into ``settings.ADAPTER_DIR``, which
marks the adapter ``ready`` or ``failed`` with the reason. Only ready adapters are published.

Prices: on creation an adapter gets its own ``Price`` row, the base's price in effect then plus
the base's ``adapter_surcharge_percent``; staff add later prices in the admin like a model's.
Deleting marks the adapter ``deleted`` (its prices stay for the usage not yet invoiced),
unpublishes it and removes the files fetched for it.

Integrity: when an adapter becomes ready its folder's manifest (``integrity.manifest_for_folder``:
every file's sha256, the source and, for the Hub, the resolved commit) is stored on it
(``manifest_digest``, ``manifest_revision``, ``manifest_files``) and its digest is published in the
mirror, so ``/v1/models``, ``/api/v1/adapters`` and the console show what was checked. A CPU engine
asked to load it recomputes the manifest and refuses a folder that no longer matches
(``cpu_engine.lora``).
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit import trail
from audit.constants import ActorKind
from integrity import Manifest, manifest_for_folder
from models_registry import mirror
from models_registry.constants import ADAPTER_BASE_TASKS, AdapterSourceKind, AdapterStatus, Visibility
from models_registry.models import LoraAdapter, Model, Price, model_name_validator
from tenants.models import Tenant

log = logging.getLogger("berth.registry")

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
FETCHED_FILES = (CONFIG_FILE, *WEIGHT_FILES)
MB = 1_000_000
REASON_CHARS = 1000
URL_TIMEOUT = 30
# Longer than a task may run (CELERY_TASK_TIME_LIMIT), so a live fetch is never started twice.
PULL_STALLED_AFTER = timedelta(minutes=15)


class AdapterError(ValidationError):
    """The adapter's files are not acceptable; the message says why, for the tenant."""


@dataclass(frozen=True)
class AdapterFiles:
    rank: int
    size_bytes: int
    base_name: str


def folder_manifest(folder: Path, *, source: str, revision: str = "") -> Manifest:
    """The manifest of a ready adapter's folder; ``source`` is where it came from (the folder, the
    Hub repo id or the URL) and ``revision`` the resolved Hub commit."""
    try:
        return manifest_for_folder(folder, source=source, revision=revision)
    except OSError as exc:
        raise AdapterError({"source": f"Cannot read the adapter's files: {exc}"}) from None


def set_manifest(adapter: LoraAdapter, manifest: Manifest) -> None:
    adapter.manifest_digest = manifest.digest
    adapter.manifest_revision = manifest.revision
    adapter.manifest_files = manifest.as_dict()["files"]


# --------------------------------------------------------------------------- sources


def source_kind_of(source: str) -> str:
    if source.startswith("/"):
        return AdapterSourceKind.PATH
    if source.startswith(("http://", "https://")):
        return AdapterSourceKind.URL
    return AdapterSourceKind.HUB


def allowed_source(*, source_kind: str, source: str) -> str:
    """``source`` as stored (a folder resolved, without ``..`` or links out of its prefix) when the
    operator's ``ADAPTER_ALLOWED_SOURCES`` allow it; ``AdapterError`` on ``source`` otherwise."""
    prefixes = settings.ADAPTER_ALLOWED_SOURCES
    source = source.strip()
    if not source:
        raise AdapterError({"source": "Give a Hugging Face repo id, a folder or a URL."})
    if source_kind == AdapterSourceKind.HUB:
        parts = source.split("/")
        if len(parts) != 2 or not all(parts) or any(p.startswith(".") for p in parts):
            raise AdapterError({"source": f"{source!r} is not a Hugging Face repo id (owner/name)."})
        allowed = any(p.startswith("hub:") and _under(p[4:], source) for p in prefixes)
    elif source_kind == AdapterSourceKind.PATH:
        if not source.startswith("/"):
            raise AdapterError({"source": "A folder must be an absolute path."})
        resolved = Path(source).resolve()
        allowed = any(p.startswith("/") and resolved.is_relative_to(Path(p).resolve()) for p in prefixes)
        source = str(resolved)
    elif source_kind == AdapterSourceKind.URL:
        if not source.startswith(("http://", "https://")) or ".." in source or "%2e" in source.lower():
            raise AdapterError({"source": f"{source!r} is not an http(s) URL of a folder."})
        source = source.rstrip("/")
        allowed = any(p.startswith(("http://", "https://")) and _under(p, source) for p in prefixes)
    else:
        raise AdapterError({"source_kind": f"Unknown source kind {source_kind!r}."})
    if not allowed:
        raise AdapterError(
            {"source": f"Adapters from {source!r} are not allowed on this server. Ask the operator."}
        )
    return source


def _under(prefix: str, value: str) -> bool:
    """``value`` is ``prefix`` or below it, a whole path segment at a time (``org`` allows
    ``org/x``, not ``org-evil/x``); an empty prefix allows everything."""
    prefix = prefix.rstrip("/")
    return not prefix or value == prefix or value.startswith(prefix + "/")


# --------------------------------------------------------------------------- checks


def read_config(folder: Path) -> tuple[int, str]:
    """The rank and the base model named by a PEFT LoRA's ``adapter_config.json``."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterError({"source": f"Not a PEFT adapter: there is no {CONFIG_FILE}."}) from None
    except (OSError, ValueError) as exc:
        raise AdapterError({"source": f"Cannot read {CONFIG_FILE}: {exc}"}) from None
    if not isinstance(config, dict):
        raise AdapterError({"source": f"{CONFIG_FILE} is not a JSON object."})
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(
            {"source": f"Not a LoRA adapter: {CONFIG_FILE} says peft_type {config.get('peft_type')!r}."}
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError({"source": f"{CONFIG_FILE} has no valid rank 'r' ({rank!r})."})
    return rank, str(config.get("base_model_name_or_path") or "")


def inspect_folder(folder: Path) -> AdapterFiles:
    """Read a PEFT LoRA adapter's folder: its rank, its size and the base it was trained on."""
    rank, base_name = read_config(folder)
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise AdapterError({"source": f"No adapter weights ({' or '.join(WEIGHT_FILES)})."})
    size = sum(path.stat().st_size for path in [folder / CONFIG_FILE, *weights])
    return AdapterFiles(rank=rank, size_bytes=size, base_name=base_name)


def deployment_rank_limit(base: Model) -> int | None:
    """The highest ``max_lora_rank`` among ``base``'s deployments (None: no limit set)."""
    limits = [getattr(d, "max_lora_rank", None) for d in base.deployments.all()]
    limits = [limit for limit in limits if limit]
    return max(limits) if limits else None


def check_files(*, tenant, base: Model, files: AdapterFiles) -> None:
    """The plan's and the base deployments' limits, and the base the adapter was trained on."""
    plan = tenant.plan
    if plan.max_adapter_rank is not None and files.rank > plan.max_adapter_rank:
        raise AdapterError(
            {"source": f"Rank {files.rank} is above your plan's maximum of {plan.max_adapter_rank}."}
        )
    deployed = deployment_rank_limit(base)
    if deployed is not None and files.rank > deployed:
        raise AdapterError(
            {
                "source": f"Rank {files.rank} is above {base.name}'s deployments' maximum LoRA rank of {deployed}."
            }
        )
    if plan.max_adapter_size_mb is not None and files.size_bytes > plan.max_adapter_size_mb * MB:
        raise AdapterError(
            {
                "source": f"The adapter is {files.size_bytes / MB:.1f} MB, above your plan's maximum of "
                f"{plan.max_adapter_size_mb} MB."
            }
        )
    trained_on = files.base_name.strip().lower()
    if (
        trained_on
        and not trained_on.startswith(("/", "."))
        and base.source_kind == "hf"
        and trained_on != base.source.lower()
    ):
        raise AdapterError(
            {
                "base_model": f"The adapter was trained on {files.base_name!r}, but {base.name} is "
                f"{base.source!r}."
            }
        )


def adapter_base(*, tenant, base_model: Model | str) -> Model:
    """The base model by name, when ``tenant`` may use it and it generates text."""
    name = base_model.name if isinstance(base_model, Model) else str(base_model)
    base = Model.objects.visible_to(tenant).filter(name=name).first()
    if base is None:
        raise AdapterError({"base_model": f"There is no model named {name!r}."})
    if base.task not in ADAPTER_BASE_TASKS:
        raise AdapterError(
            {"base_model": f"{base.name} is an {base.task} model; adapters need a chat or completion model."}
        )
    return base


# --------------------------------------------------------------------------- prices


def surcharged(amount: Decimal, percent: Decimal) -> Decimal:
    return (amount * (1 + percent / 100)).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def add_initial_price(*, adapter: LoraAdapter) -> Price | None:
    """The base's price in effect now plus its adapter surcharge; none when the base is free."""
    base_price = Price.objects.in_effect(adapter.base_model)
    if base_price is None:
        return None
    percent = adapter.base_model.adapter_surcharge_percent
    price = Price(
        adapter=adapter,
        input_per_million=surcharged(base_price.input_per_million, percent),
        output_per_million=surcharged(base_price.output_per_million, percent),
        # the base's own cached-input price carries the surcharge too; unset, both use the fraction
        cached_input_per_million=(
            surcharged(base_price.cached_input_per_million, percent)
            if base_price.cached_input_per_million is not None
            else None
        ),
        currency=base_price.currency,
        effective_from=adapter.created_at,
    )
    price.save()
    return price


# --------------------------------------------------------------------------- changes


def create_adapter(
    *,
    tenant,
    name: str,
    base_model: Model | str,
    source: str,
    revision: str = "",
    source_kind: str | None = None,
) -> LoraAdapter:
    """Register ``tenant``'s adapter: a folder is checked now, a repo or URL fetched by a task.

    Raises ``AdapterError`` (a ``ValidationError`` by field) with a message for the tenant.
    """
    name = (name or "").strip()
    try:
        model_name_validator(name)
    except ValidationError as exc:
        raise AdapterError({"name": exc.messages}) from None
    base = adapter_base(tenant=tenant, base_model=base_model)
    kind = source_kind or source_kind_of(source.strip())
    source = allowed_source(source_kind=kind, source=source)
    revision = revision.strip() if kind == AdapterSourceKind.HUB else ""
    files = None
    if kind == AdapterSourceKind.PATH:
        if not Path(source).is_dir():
            raise AdapterError({"source": f"{source} is not a folder on the server."})
        files = inspect_folder(Path(source))
        check_files(tenant=tenant, base=base, files=files)
        manifest = folder_manifest(Path(source), source=source)
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # one creation at a time
        live = LoraAdapter.objects.of_tenant(tenant)
        if live.filter(name=name).exists():
            raise AdapterError({"name": f"You already have an adapter named {name!r}."})
        limit = tenant.plan.max_adapters
        if limit is not None and live.count() >= limit:
            raise AdapterError(
                {"name": f"Your plan allows {limit} adapter{'s' if limit != 1 else ''}; delete one first."}
            )
        adapter = LoraAdapter(
            tenant=tenant,
            base_model=base,
            name=name,
            source_kind=kind,
            source=source,
            revision=revision,
            visibility=Visibility.PRIVATE,
        )
        if files is not None:
            adapter.local_path = source
            adapter.rank, adapter.size_bytes = files.rank, files.size_bytes
            adapter.status = AdapterStatus.READY
            set_manifest(adapter, manifest)
        adapter.save()
        add_initial_price(adapter=adapter)
        trail.record(
            action="adapter.created",
            tenant=tenant,
            target=adapter,
            summary=f"adapter {adapter.served_name} on {adapter.base_model.name}",
            after=trail.fields(
                adapter,
                ("served_name", "source_kind", "source", "revision", "rank", "status", "manifest_digest"),
            ),
        )
        if adapter.status == AdapterStatus.READY:
            transaction.on_commit(lambda: mirror.publish_adapter(adapter))
        else:
            transaction.on_commit(lambda: _enqueue_pull(adapter))
    log.info("adapter %s registered from %s (%s)", adapter.served_name, adapter.source, adapter.status)
    return adapter


def retry_stalled_pulls(*, now=None) -> int:
    """Enqueue again the fetch of adapters pending for longer than ``PULL_STALLED_AFTER`` (their
    task was lost: a worker restarted); the periodic mirror resync calls this."""
    now = now or timezone.now()
    stalled = list(
        LoraAdapter.objects.filter(status=AdapterStatus.PENDING, updated_at__lt=now - PULL_STALLED_AFTER)
    )
    for adapter in stalled:
        LoraAdapter.objects.filter(pk=adapter.pk).update(updated_at=now)
        _enqueue_pull(adapter)
    return len(stalled)


def _enqueue_pull(adapter: LoraAdapter) -> None:
    from models_registry.tasks import pull_adapter

    pull_adapter.delay(str(adapter.pk))


def save_adapter(*, adapter: LoraAdapter) -> LoraAdapter:
    """Save an edit (staff: visibility, base) and republish or unpublish it after the commit."""
    with transaction.atomic():
        adapter.save()
        trail.record(
            action="adapter.changed",
            tenant=adapter.tenant,
            target=adapter,
            summary=f"adapter {adapter.served_name} edited",
            after=trail.fields(adapter, ("visibility", "base_model_id", "status")),
        )
        transaction.on_commit(lambda: publish(adapter))
    return adapter


def record_manifest(*, adapter: LoraAdapter, via: str = "") -> LoraAdapter:
    """Accept a ready adapter's files as they are now: a new manifest, audited and republished.

    For an adapter made ready before manifests existed, or whose files the operator changed on
    purpose; the revision stays the one recorded (a Hub adapter's files are that commit's).
    """
    folder = Path(adapter.engine_source)
    if not folder.is_dir():
        raise AdapterError({"source": f"{folder} is not a folder on this server."})
    manifest = folder_manifest(folder, source=adapter.source, revision=adapter.manifest_revision)
    with transaction.atomic():
        locked = LoraAdapter.objects.select_for_update().get(pk=adapter.pk)
        before = locked.manifest_digest
        if before == manifest.digest:
            return locked
        set_manifest(locked, manifest)
        locked.save(update_fields=["manifest_digest", "manifest_revision", "manifest_files", "updated_at"])
        trail.record(
            action="adapter.manifest_recorded",
            tenant=locked.tenant,
            target=locked,
            actor_label=via,
            summary=f"adapter {locked.served_name}: {len(manifest.files)} files, {manifest.digest}",
            before={"manifest_digest": before},
            after={
                "manifest_digest": manifest.digest,
                "source": manifest.source,
                "revision": manifest.revision,
            },
        )
        transaction.on_commit(lambda: publish(locked))
    return locked


def publish(adapter: LoraAdapter) -> None:
    """The mirror as the adapter's state says: published when ready, absent otherwise."""
    if adapter.status == AdapterStatus.READY:
        mirror.publish_adapter(adapter)
    else:
        mirror.unpublish_model(adapter.served_name)


def delete_adapter(*, adapter: LoraAdapter) -> None:
    """Mark it deleted (its prices outlive it), unpublish it and remove the files fetched for it."""
    with transaction.atomic():
        adapter.status = AdapterStatus.DELETED
        adapter.deleted_at = timezone.now()
        adapter.save(update_fields=["status", "deleted_at", "updated_at"])
        trail.record(
            action="adapter.deleted",
            tenant=adapter.tenant,
            target=adapter,
            summary=f"adapter {adapter.served_name}",
        )
        served_name, folder = adapter.served_name, fetched_folder(adapter)
        transaction.on_commit(lambda: mirror.unpublish_model(served_name))
        transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))
    log.info("adapter %s deleted", served_name)


# --------------------------------------------------------------------------- fetching


def fetched_folder(adapter: LoraAdapter) -> Path:
    return Path(settings.ADAPTER_DIR) / str(adapter.pk)


def _fail(adapter: LoraAdapter, reason: str) -> LoraAdapter:
    LoraAdapter.objects.filter(pk=adapter.pk, status=AdapterStatus.PENDING).update(
        status=AdapterStatus.FAILED, status_reason=reason[:REASON_CHARS], updated_at=timezone.now()
    )
    shutil.rmtree(fetched_folder(adapter), ignore_errors=True)
    adapter.refresh_from_db()
    log.warning("adapter %s failed: %s", adapter.served_name, reason)
    return adapter


def _max_bytes(adapter: LoraAdapter) -> int | None:
    limit = adapter.tenant.plan.max_adapter_size_mb
    return None if limit is None else limit * MB


def _too_large(size: int, limit: int) -> str:
    return f"The adapter is {size / MB:.1f} MB, above your plan's maximum of {limit // MB} MB."


def fetch_hub(adapter: LoraAdapter, folder: Path) -> str:
    """Download the adapter's files (config and weights only) from the Hub at one commit; the
    plan's size limit is checked on the Hub's file sizes before anything is downloaded. Returns
    the commit fetched (empty when the Hub did not say)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        info = HfApi(endpoint=settings.HF_ENDPOINT).model_info(
            adapter.source, revision=adapter.revision or None, files_metadata=True
        )
        wanted = {s.rfilename: s.size or 0 for s in info.siblings or [] if s.rfilename in FETCHED_FILES}
        if CONFIG_FILE not in wanted:
            raise AdapterError({"source": f"Not a PEFT adapter: {adapter.source} has no {CONFIG_FILE}."})
        if WEIGHT_FILES[0] in wanted:
            wanted.pop(WEIGHT_FILES[1], None)  # safetensors when both are there
        revision = info.sha or adapter.revision or None

        def download(filename: str) -> None:
            hf_hub_download(
                adapter.source,
                filename,
                revision=revision,
                local_dir=folder,
                endpoint=settings.HF_ENDPOINT,
                etag_timeout=settings.HF_ETAG_TIMEOUT,
            )

        # The config first: type, rank, base and the Hub's sizes are checked before the weights.
        download(CONFIG_FILE)
        rank, base_name = read_config(folder)
        size = sum(wanted.values())
        check_files(tenant=adapter.tenant, base=adapter.base_model, files=AdapterFiles(rank, size, base_name))
        for filename in wanted:
            if filename != CONFIG_FILE:
                download(filename)
        return info.sha or ""
    except LocalEntryNotFoundError:
        where = settings.HF_ENDPOINT or "huggingface.co"
        raise AdapterError({"source": f"Could not reach {where} to fetch {adapter.source}."}) from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403, 404):
            revision = adapter.revision or "main"
            raise AdapterError(
                {"source": f"{adapter.source} (revision {revision}) was not found on the Hub."}
            ) from None
        raise AdapterError({"source": f"Could not fetch {adapter.source}: {exc}"}) from None
    except OSError as exc:
        raise AdapterError({"source": f"Could not fetch {adapter.source}: {exc}"}) from None


def fetch_url(adapter: LoraAdapter, folder: Path) -> None:
    """Fetch ``<url>/adapter_config.json`` and its weights (safetensors, else bin), size-bounded."""
    limit = _max_bytes(adapter)
    folder.mkdir(parents=True, exist_ok=True)
    fetched = 0
    for name in FETCHED_FILES:
        if name == WEIGHT_FILES[1] and (folder / WEIGHT_FILES[0]).exists():
            break
        url = f"{adapter.source}/{name}"
        try:
            # The URL is http(s) under a prefix the operator allowed (allowed_source).
            response = urllib.request.urlopen(url, timeout=URL_TIMEOUT)  # noqa: S310
            with response, open(folder / name, "wb") as out:
                while chunk := response.read(1 << 20):
                    fetched += len(chunk)
                    if limit is not None and fetched > limit:
                        raise AdapterError({"source": _too_large(fetched, limit)})
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            (folder / name).unlink(missing_ok=True)
            if exc.code == 404 and name != CONFIG_FILE:
                continue  # the other weights format may be there
            raise AdapterError({"source": f"Could not fetch {url}: HTTP {exc.code}."}) from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdapterError({"source": f"Could not fetch {url}: {exc}"}) from None


def pull(*, adapter_id: str) -> LoraAdapter | None:
    """Fetch and check a pending adapter, then mark it ready (and publish it) or failed."""
    adapter = LoraAdapter.objects.select_related("tenant__plan", "base_model").filter(pk=adapter_id).first()
    if adapter is None or adapter.status != AdapterStatus.PENDING:
        return adapter
    folder = fetched_folder(adapter)
    revision = ""
    try:
        shutil.rmtree(folder, ignore_errors=True)
        if adapter.source_kind == AdapterSourceKind.HUB:
            revision = fetch_hub(adapter, folder)
        elif adapter.source_kind == AdapterSourceKind.URL:
            fetch_url(adapter, folder)
        else:
            folder = Path(adapter.source)
        files = inspect_folder(folder)
        check_files(tenant=adapter.tenant, base=adapter.base_model, files=files)
        manifest = folder_manifest(folder, source=adapter.source, revision=revision)
    except ValidationError as exc:
        return _fail(adapter, " ".join(exc.messages))
    except Exception as exc:  # noqa: BLE001 - a network or disk failure: failed, with the reason
        log.exception("fetching adapter %s failed", adapter.served_name)
        return _fail(adapter, f"Could not fetch {adapter.source}: {exc}")
    with transaction.atomic():
        updated = LoraAdapter.objects.filter(pk=adapter.pk, status=AdapterStatus.PENDING).update(
            status=AdapterStatus.READY,
            status_reason="",
            rank=files.rank,
            size_bytes=files.size_bytes,
            local_path=str(folder),
            manifest_digest=manifest.digest,
            manifest_revision=manifest.revision,
            manifest_files=manifest.as_dict()["files"],
            updated_at=timezone.now(),
        )
        adapter.refresh_from_db()
        if updated:
            trail.record(
                action="adapter.manifest_recorded",
                tenant=adapter.tenant,
                actor_kind=ActorKind.SYSTEM,
                target=adapter,
                summary=f"adapter {adapter.served_name}: {len(manifest.files)} files, {manifest.digest}",
                after={
                    "manifest_digest": manifest.digest,
                    "source": manifest.source,
                    "revision": manifest.revision,
                },
            )
            transaction.on_commit(lambda: mirror.publish_adapter(adapter))
    if not updated:  # deleted while it was being fetched
        shutil.rmtree(fetched_folder(adapter), ignore_errors=True)
    log.info(
        "adapter %s is %s (rank %s, %s bytes)",
        adapter.served_name,
        adapter.status,
        files.rank,
        files.size_bytes,
    )
    return adapter
