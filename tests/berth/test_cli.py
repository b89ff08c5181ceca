"""The ``berth`` console script, run as an installed program from a directory that is not the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

BERTH = str(Path(sys.executable).parent / "berth")


def run_berth(
    *args: str, cwd: Path, env: dict[str, str] | None = None, python_flags=()
) -> subprocess.CompletedProcess:
    """Run the script pip installed (through the interpreter, so that ``-X`` flags apply).

    Without DJANGO_SETTINGS_MODULE, as from a fresh shell: the script must name its settings itself.
    """
    environ = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(  # noqa: S603
        [sys.executable, *python_flags, BERTH, *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output (``import time: self | cumulative | name``)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_berth_help_lists_its_own_words_and_the_management_commands(tmp_path):
    result = run_berth("help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("berth up", "berth gateway", "berth agent"):
        assert word in result.stdout
    for command in ("migrate", "createsuperuser", "up", "node_agent"):
        assert f"    {command}\n" in result.stdout
    assert run_berth(cwd=tmp_path).stdout == result.stdout  # no word: the same help


def test_berth_gateway_imports_no_django(tmp_path):
    result = run_berth("gateway", "--help", cwd=tmp_path, python_flags=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--port" in result.stdout
    modules = imported_modules(result.stderr)
    assert "gateway.__main__" in modules  # the gateway's own entry point answered
    assert "berth.cli" in modules
    django = sorted(m for m in modules if m == "django" or m.startswith("django."))
    assert django == []
    assert not any(m == "celery" or m.startswith("celery.") for m in modules)  # Celery imports Django


def test_berth_agent_is_the_node_agent(tmp_path):
    result = run_berth("agent", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--cpu-slots" in result.stdout and "--labels" in result.stdout


@pytest.mark.slow  # Django starts twice in subprocesses
@pytest.mark.django_db(transaction=True)  # CREATE DATABASE cannot run inside a transaction
def test_any_other_word_is_the_management_command_from_any_directory(tmp_path):
    """``berth migrate --check`` against the (fully migrated) test database, run from elsewhere."""
    db = connection.settings_dict
    auth = f"{db['USER']}:{db['PASSWORD']}@" if db.get("PASSWORD") else f"{db['USER']}@"
    env = {"DATABASE_URL": f"postgresql://{auth}{db['HOST']}:{db['PORT']}/{db['NAME']}", "DEBUG": "1"}
    result = run_berth("migrate", "--check", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same word on a database without Berth's tables reports unapplied migrations (exit 1).
    with connection.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS berth_cli_empty")
        cursor.execute("CREATE DATABASE berth_cli_empty")
    try:
        empty = {**env, "DATABASE_URL": env["DATABASE_URL"].rsplit("/", 1)[0] + "/berth_cli_empty"}
        assert run_berth("migrate", "--check", cwd=tmp_path, env=empty).returncode == 1
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP DATABASE IF EXISTS berth_cli_empty")
