"""pre-commit runs the same checks as CI, with the ruff version the test extra installs."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (ROOT / ".pre-commit-config.yaml").read_text()


def test_its_ruff_is_the_installed_ruff():
    pinned = set(re.findall(r"ruff==([\d.]+)", CONFIG))
    assert pinned == {importlib.metadata.version("ruff")}


def test_it_runs_the_django_checks_and_mypy():
    entries = re.findall(r"^\s+entry: (.+)$", CONFIG, re.M)
    assert any(entry.startswith("ruff format") for entry in entries)
    assert any(entry.startswith("ruff check") for entry in entries)
    assert any(entry.endswith("manage.py check") for entry in entries)
    assert any(entry.endswith("manage.py makemigrations --check --dry-run") for entry in entries)
    assert any(entry.endswith("-m mypy") for entry in entries)
