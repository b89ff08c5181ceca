"""``manage.py revoke_api_key <prefix>``: revoke by displayed prefix (or lookup id, or the full key)."""

from django.core.management.base import BaseCommand, CommandError

from tenants import keys
from tenants.constants import KEY_LOOKUP_LENGTH, KEY_PREFIX
from tenants.models import ApiKey


def lookup_id_from(value: str) -> str:
    value = value.strip().rstrip("…").rstrip(".")
    for prefix in KEY_PREFIX.values():
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    return value.split("_", 1)[0][:KEY_LOOKUP_LENGTH]


class Command(BaseCommand):
    help = "Revoke an API key given its prefix as shown in the console (e.g. sk-berth-AbC123xyz789)."

    def add_arguments(self, parser):
        parser.add_argument("prefix")

    def handle(self, *args, **options):
        api_key = ApiKey.objects.filter(lookup_id=lookup_id_from(options["prefix"])).first()
        if api_key is None:
            raise CommandError(f"No API key with prefix {options['prefix']!r}.")
        keys.revoke_api_key(api_key=api_key)
        self.stderr.write(
            f"Revoked {api_key.display_prefix}… ({api_key.name}) of tenant {api_key.tenant.slug}."
        )
