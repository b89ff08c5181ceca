"""A model change without its migration fails the suite (and ``make lint``, and pre-commit)."""

from __future__ import annotations

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_every_model_change_has_its_migration():
    try:
        call_command("makemigrations", check=True, dry_run=True, verbosity=0)
    except SystemExit as exc:  # --check exits 1 when a migration is missing
        pytest.fail(f"a migration is missing (manage.py makemigrations --dry-run shows it): exit {exc.code}")
