"""The import floors hold: studies -> analysis -> medseg_platform -> methods, never upwards.

A module may import from its own floor and the floors below it, at module level or inside a function
(a lazy import that points up is still a dependency that points up). The check reads the source with
:mod:`ast`, so it sees every import statement without running the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("methods", "medseg_platform", "analysis", "studies")  # bottom to top
RANK = {name: rank for rank, name in enumerate(FLOORS)}


def imported_packages(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``source`` that names one of the floors."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.extend((node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in RANK)
    return found


def upward_imports(floor: str, source: str) -> list[str]:
    """``"line N imports <package>"`` for every import in a module of ``floor`` that points up a floor."""
    return [f"line {line} imports {package}" for line, package in imported_packages(source) if RANK[package] > RANK[floor]]


def package_modules():
    for floor in FLOORS:
        for path in sorted((ROOT / floor).rglob("*.py")):
            yield floor, path


def test_the_checker_sees_upward_imports_at_module_level_and_inside_functions():
    source = "import torch\nfrom methods.unet import UNet\ndef f():\n    from analysis.tables import x\n    import studies.a\n"
    assert upward_imports("medseg_platform", source) == ["line 4 imports analysis", "line 5 imports studies"]
    assert upward_imports("studies", source) == []
    assert upward_imports("methods", "from medseg_platform.errors import ConfigError\n") == ["line 1 imports medseg_platform"]
    assert upward_imports("methods", "from . import unet\nfrom .unet import UNet\n") == []  # relative: same floor


@pytest.mark.parametrize("floor", FLOORS)
def test_no_module_imports_from_a_floor_above_its_own(floor):
    paths = [path for f, path in package_modules() if f == floor]
    assert paths, f"no modules found under {floor}/"
    problems = [f"{path.relative_to(ROOT)}: {problem}" for path in paths
                for problem in upward_imports(floor, path.read_text(encoding="utf-8"))]
    assert problems == []
