"""mypy (with django-stubs) passes on what ``[tool.mypy] files`` in pyproject.toml lists: the
contract, the gateway, billing and the key service (``make lint`` and pre-commit run the same).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a cold mypy run with the Django plugin takes tens of seconds
def test_mypy_passes():
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
