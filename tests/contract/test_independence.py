"""The contract is importable by a process that has no Django: the gateway."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import contract

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = (
    "django",
    "berth",
    "tenants",
    "provisioning",
    "gateway",
    "billing",
    "models_registry",
    "console",
    "staff",
)


def test_importing_every_contract_module_loads_no_django_and_no_app():
    modules = [f"contract.{info.name}" for info in pkgutil.iter_modules(contract.__path__)]
    assert {"contract.redis_names", "contract.usage", "contract.api_keys"} <= set(modules)
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    loaded = {name.split(".")[0] for name in __import__("json").loads(done.stdout)}
    assert not loaded & set(FORBIDDEN)
