"""Every third-party package the application imports is declared in pyproject.toml.

An import that works only because another dependency happens to bring the package along breaks
the day that dependency drops it, and the images (which install exactly the lockfiles) never have
it. Each top-level package may use the core dependencies and the extras listed for it.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
APP_PACKAGES = [
    "berth",
    "tenants",
    "models_registry",
    "provisioning",
    "gateway",
    "billing",
    "console",
    "staff",
    "economics",
    "audit",
    "guardrails",
    "webhooks",
    "contract",
    "cpu_engine",
    "integrity",
    "batches",
]
# Extras a package may import from besides the core dependencies.
EXTRAS_FOR = {
    "cpu_engine": {"cpu"},
    "integrity": {"signing"},
    # The node agent: Kubernetes backend, NVML for GPUs, the launchers and the tiny/embedding models.
    "provisioning": {"kubernetes", "agent", "gpu", "cpu"},
}
# Import names whose distribution is not installed here (the GPU extra lives in vLLM's image).
NOT_INSTALLED = {"pynvml": "nvidia-ml-py", "vllm": "vllm"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """Distribution names by group: "" for the core dependencies, else the extra's name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {group: {canonical(Requirement(spec).name) for spec in specs} for group, specs in groups.items()}


def third_party_imports(package: str) -> dict[str, set[str]]:
    """Top-level module names imported from outside the project, with the files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "tests" in path.relative_to(ROOT).parts:  # a package's own tests use the test extra
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in APP_PACKAGES and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    if module in NOT_INSTALLED:
        return {canonical(NOT_INSTALLED[module])}
    return {canonical(name) for name in installed().get(module, [])}


def test_every_imported_package_is_declared_for_its_package():
    groups = declared()
    problems = []
    for package in APP_PACKAGES:
        if not (ROOT / package).is_dir():
            continue
        allowed = groups[""].union(*(groups.get(extra, set()) for extra in EXTRAS_FOR.get(package, ())))
        for module, files in sorted(third_party_imports(package).items()):
            dists = distributions_of(module)
            if not dists:
                problems.append(f"{module} (in {', '.join(sorted(files))}) is not installed")
            elif not dists & allowed:
                problems.append(
                    f"{module} (in {', '.join(sorted(files))}) comes from {', '.join(sorted(dists))}, "
                    f"declared for {package} in none of: dependencies"
                    + "".join(f", {extra}" for extra in sorted(EXTRAS_FOR.get(package, ())))
                )
    assert problems == []


def test_the_walk_finds_imports():
    imports = third_party_imports("billing")
    assert "stripe" in imports and "django" in imports
    assert not {"billing", "os", "__future__"} & set(imports)
