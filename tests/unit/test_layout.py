"""Components import only ``streamcore``; ``streamcore`` imports no component (DESIGN §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("producer", "consumer", "reclaimer", "autoscaler")


def imported_top_levels(package: str) -> dict[str, set[str]]:
    """Map each module file of ``package`` to the top-level names it imports."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", COMPONENTS)
def test_component_imports_no_other_component(package: str) -> None:
    if not (ROOT / package).is_dir():
        pytest.fail(f"component package {package}/ is missing")
    others = set(COMPONENTS) - {package}
    bad = {f: sorted(n & others) for f, n in imported_top_levels(package).items() if n & others}
    assert bad == {}


def test_streamcore_imports_no_component() -> None:
    bad = {f: sorted(n & set(COMPONENTS)) for f, n in imported_top_levels("streamcore").items() if n & set(COMPONENTS)}
    assert bad == {}


def test_no_top_level_package_shadows_stdlib() -> None:
    assert not (ROOT / "operator").exists()
    assert not (ROOT / "operator.py").exists()
