"""mypy (with django-stubs) passes on the modules it checks.

The modules listed here are the ones already clean; the rest of ``[tool.mypy] files`` in
pyproject.toml is checked by ``make lint`` and pre-commit. ``--follow-imports=silent`` reports
errors in these modules only, not in the modules they import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["billing", "tenants/keys.py"]


@pytest.mark.slow  # a cold mypy run with the Django plugin takes tens of seconds
def test_mypy_passes():
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mypy", "--follow-imports=silent", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
