"""Provisioning depends on the model registry, never the reverse (no import cycle between them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_model_registry_imports_nothing_from_provisioning():
    offenders = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "models_registry").rglob("*.py"))
        for module in imported_modules(path)
        if module == "provisioning" or module.startswith("provisioning.")
    }
    assert not offenders, "models_registry must not import provisioning:\n" + "\n".join(sorted(offenders))


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from provisioning import operations\n    import provisioning.models\n")
    assert imported_modules(module) == {"provisioning", "provisioning.models"}
