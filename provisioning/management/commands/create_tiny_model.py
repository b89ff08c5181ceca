"""``manage.py create_tiny_model``: write the offline tiny chat model for GPU-less hosts."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from cpu_engine.tiny_model import create_tiny_model


def default_path() -> Path:
    return settings.DATA_DIR / "models" / "berth-tiny-chat"


class Command(BaseCommand):
    help = "Create the tiny random-weight Llama chat model (offline, deterministic) used by the CPU engine."

    def add_arguments(self, parser):
        parser.add_argument(
            "--path",
            type=Path,
            default=None,
            help="target folder (default: <BERTH_DATA_DIR>/models/berth-tiny-chat)",
        )
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, path: Path | None, seed: int, **options):
        target = path or default_path()
        create_tiny_model(target, seed=seed, log=lambda msg: self.stdout.write(msg))
        self.stdout.write(self.style.SUCCESS(str(target)))
