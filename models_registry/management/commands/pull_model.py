"""``manage.py pull_model <repo-or-path>``: register a local folder, or download and register."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from models_registry.constants import Task
from models_registry.pull import PullError, pull_model


class Command(BaseCommand):
    help = "Register a model from a local folder, or download it from the Hugging Face Hub first."

    def add_arguments(self, parser):
        parser.add_argument("source", help="Hugging Face repo id (org/name) or a local folder.")
        parser.add_argument("--name", help="Public model name; default: derived from the source.")
        parser.add_argument("--revision", help="Git revision on the Hub (branch, tag or commit).")
        parser.add_argument("--task", choices=Task.values, default=Task.CHAT)

    def handle(self, *args, **options):
        try:
            model = pull_model(
                source=options["source"],
                name=options["name"],
                revision=options["revision"],
                task=options["task"],
            )
        except PullError as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(f"invalid model: {'; '.join(exc.messages)}") from exc
        self.stdout.write(
            self.style.SUCCESS(f"registered {model.name} ({model.source_kind}: {model.source})")
        )
