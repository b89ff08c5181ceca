"""``manage.py record_manifest <model>``: accept a model's files as they are now.

For a model registered before manifests existed, or after an operator changed its files on
purpose: node agents refuse to start an engine on files that differ from the latest manifest, and
this records a new one from the local folder (or the Hub snapshot already in the shared cache at
the model's revision). Prints the digest. ``--adapter`` does the same for a ready LoRA adapter
named by its served name (``<tenant slug>/<name>``): an adapter made ready before manifests
existed has none, and its CPU engines load it unchecked until one is recorded.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from models_registry import adapters, manifests
from models_registry.constants import SourceKind
from models_registry.models import LoraAdapter, Model


class Command(BaseCommand):
    help = "Record the manifest of a model's files as they are now (sha256 of every file)."

    def add_arguments(self, parser):
        parser.add_argument(
            "name", help="The model's public name (with --adapter: the adapter's served name)."
        )
        parser.add_argument(
            "--adapter",
            action="store_true",
            help="NAME is a LoRA adapter's served name, <tenant slug>/<name>.",
        )

    def handle(self, *args, **options):
        if options["adapter"]:
            self._adapter(options["name"])
            return
        model = Model.objects.filter(name=options["name"]).first()
        if model is None:
            raise CommandError(f"no model named {options['name']!r}")
        if model.source_kind == SourceKind.LOCAL:
            folder, revision = model.source, ""
        else:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import LocalEntryNotFoundError

            try:
                folder = snapshot_download(
                    model.source,
                    revision=model.revision or None,
                    cache_dir=settings.HF_CACHE_DIR,
                    local_files_only=True,
                )
            except LocalEntryNotFoundError as exc:
                raise CommandError(
                    f"{model.source} is not in the cache {settings.HF_CACHE_DIR}: run manage.py pull_model"
                ) from exc
            revision = folder.rstrip("/").rsplit("/", 1)[-1]
        try:
            row = manifests.record_folder(
                model=model,
                folder=folder,
                source=model.source,
                revision=revision,
                via="manage.py record_manifest",
            )
        except OSError as exc:
            raise CommandError(f"cannot read {folder}: {exc}") from exc
        self.stdout.write(f"{model.name}: {row.digest} ({row.file_count} files, {row.total_bytes} bytes)")

    def _adapter(self, served_name: str) -> None:
        adapter = LoraAdapter.objects.ready().filter(served_name=served_name).first()
        if adapter is None:
            raise CommandError(f"no ready adapter named {served_name!r}")
        try:
            adapter = adapters.record_manifest(adapter=adapter, via="manage.py record_manifest")
        except adapters.AdapterError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        self.stdout.write(
            f"{adapter.served_name}: {adapter.manifest_digest} ({len(adapter.manifest_files)} files)"
        )
