"""The code's shape: imports run one way (import-linter's contracts in pyproject.toml), imports sit at module level,
functions stay short."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("yolo_unified", "benchmarks")
OPTIONAL = {"onnx", "onnxruntime", "openvino", "nncf", "tensorrt"}  # the export extras: imported where used
MAX_FUNCTION_LINES = 80


def functions(package: str):
    """(file, function node) for every function and method of the package's modules."""
    for file in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield file.relative_to(REPO), node


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run import-linter's ``lint-imports`` in `cwd`."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports not found: install the dev extras (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([lint, "--no-cache", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_import_contracts_hold():
    """A new upward import or cycle fails here with the line that made it (lint-imports prints it)."""
    res = lint_imports(REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_contracts_count_type_checking_imports(tmp_path):
    """An upward import under ``if TYPE_CHECKING:`` breaks a contract too (the settings the project's use)."""
    assert (
        "exclude_type_checking_imports" not in (REPO / "pyproject.toml").read_text()
    )  # import-linter's default: counted
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "top.py").write_text("from pkg import low\n")
    (tmp_path / "pkg" / "low.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg import top\n"
    )
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = pkg\n\n[importlinter:contract:1]\nname = layers\ntype = layers\n"
        "layers =\n    pkg.top\n    pkg.low\n"
    )
    res = lint_imports(tmp_path)
    assert res.returncode == 1 and "pkg.low -> pkg.top" in res.stdout, res.stdout + res.stderr


def test_imports_sit_at_module_level():
    """No import inside a function (the way cycles get dodged), except the optional export dependencies."""
    inside = [
        f"{file}:{sub.lineno} in {node.name}"
        for package in PACKAGES
        for file, node in functions(package)
        for sub in ast.walk(node)
        if isinstance(sub, (ast.Import, ast.ImportFrom))
        and not {(a.name if isinstance(sub, ast.Import) else sub.module or "").split(".")[0] for a in sub.names}
        <= OPTIONAL
    ]
    assert not inside, "imports inside functions:\n" + "\n".join(inside)


def test_functions_stay_short():
    long = [
        f"{file}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for package in PACKAGES
        for file, node in functions(package)
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
