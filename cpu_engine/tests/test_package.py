"""The engine as a package of its own: it starts as ``python -m cpu_engine``, imports nothing from
Django or Berth's other packages, and declares every package it imports in the ``cpu`` extra."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import cpu_engine

PACKAGE = Path(cpu_engine.__file__).resolve().parent
REPO_ROOT = PACKAGE.parent
# Berth's other top-level packages, and Django.
FORBIDDEN = {
    "django",
    "rest_framework",
    "celery",
    "berth",
    "contract",
    "tenants",
    "models_registry",
    "provisioning",
    "gateway",
    "billing",
    "console",
    "staff",
}


def engine_modules() -> list[str]:
    """Every module of the engine itself, its tests left out."""
    return sorted(
        "cpu_engine" if path.stem == "__init__" else f"cpu_engine.{path.stem}"
        for path in PACKAGE.glob("*.py")
    )


def imported_top_level_names() -> set[str]:
    names = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow  # imports torch and transformers in a subprocess
def test_importing_every_engine_module_loads_no_django_and_no_other_berth_package():
    code = (
        "import importlib, json, sys\n"
        f"for name in {engine_modules()!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert "cpu_engine" in loaded
    assert "fastapi" in loaded  # the app module was really imported
    assert loaded & FORBIDDEN == set()


def test_every_package_it_imports_is_declared_in_the_cpu_extra():
    extra = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "cpu"
    ]
    declared = {normalise(re.match(r"[A-Za-z0-9._-]+", requirement).group()) for requirement in extra}
    distributions = importlib.metadata.packages_distributions()
    # integrity (weight manifests, no Django) ships in Berth's own distribution: the engine checks
    # an adapter's files against the manifest the gateway sends with the load call.
    own = {"cpu_engine", "integrity", "__future__"}
    third_party = imported_top_level_names() - set(sys.stdlib_module_names) - own
    assert {"torch", "transformers", "fastapi", "uvicorn"} <= third_party  # the scan sees the imports
    undeclared = {
        name: distributions.get(name)
        for name in third_party
        if not {normalise(dist) for dist in distributions.get(name, [name])} & declared
    }
    assert undeclared == {}


def test_python_dash_m_cpu_engine_starts_the_engine_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "cpu_engine", "--help"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("usage: python -m cpu_engine")
    assert "--served-model-name" in out.stdout and "--fd" in out.stdout


def test_it_refuses_a_folder_without_a_model(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cpu_engine", "--task", "chat", "--model", str(tmp_path)]
        + ["--served-model-name", "x"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert f"no model folder at {tmp_path}" in out.stderr
