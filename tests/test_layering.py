"""Imports go one way only: hwprofiles <- costmodel <- solver <- validate <- tierplan (DESIGN.md).

Checked twice: statically (every import statement of every module, including ones inside functions)
and at run time (importing a package in a fresh interpreter loads none of the forbidden modules).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import
FORBIDDEN = {
    "hwprofiles": {"costmodel", "solver", "validate", "tierplan", "notebooks", "pulp", "highspy", "torch"},
    "costmodel": {"solver", "validate", "tierplan", "notebooks", "pulp", "highspy", "torch"},
    "solver": {"validate", "tierplan", "notebooks", "torch"},
    "validate": {"tierplan", "notebooks"},
    "tierplan": {"notebooks"},
}
# The layers that must exist: an empty walk would make the static check vacuous.
REQUIRED = ("hwprofiles", "costmodel", "solver")


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in a file; relative imports stay in ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []


def test_imports_parse_as_expected(tmp_path):
    # the checker itself: absolute, dotted, relative, inside a function, and importlib
    src = tmp_path / "m.py"
    src.write_text("import os.path\nfrom pulp import LpProblem\nfrom . import sibling\n"
                   "def f():\n    import torch\n    importlib.import_module('solver.kv')\n")
    assert [m for _, m in _imports(src, "pkg")] == ["os", "pulp", "pkg", "torch", "solver"]


@pytest.mark.parametrize("package", REQUIRED)
def test_layer_exists(package):
    assert _files(package), f"{package}/ has no Python files"


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_no_import_against_the_layering(package):
    violations = []
    for path in _files(package):
        for line, module in _imports(path, package):
            if module in FORBIDDEN[package]:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("hwprofiles", FORBIDDEN["hwprofiles"]), ("costmodel", FORBIDDEN["costmodel"]),
     ("solver", FORBIDDEN["solver"])],
)
def test_importing_a_layer_loads_nothing_above_it(package, forbidden):
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({package!r})\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(forbidden)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {package} loaded {out.stdout.strip()}"
