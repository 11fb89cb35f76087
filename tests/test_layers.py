"""One-way layers: the ``qground`` package (model, inference, app backend) never imports the training package, the
benchmarks, the tests or the app; those import ``qground``, not the other way round.

Modules are read with ``ast``, never imported: every ``import x`` / ``from x import y`` anywhere in a module (inside
functions and ``if`` blocks too), relative imports resolved against the module's package, and
``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qground"
# Top-level names outside the package: the other layers, and the tests' own modules (importable as top-level names
# when tests/ is on sys.path: conftest, llama_pieces, ...).
FORBIDDEN = {"training", "bench", "tests", "app"} | {path.stem for path in (ROOT / "tests").glob("*.py")}
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
SKIPPED_TOP_DIRS = {"out", "runs", "test-artifacts"}  # run outputs (.gitignore)
# Built from two halves so that this file does not hold the name it searches for.
SPEC_LOADER = "spec_from_" + "file_location"


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, str]]:
    """(line, absolute module name, source text) of every import in ``source``, the code of module ``module``."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                keep = len(parts) - (node.level - 1)
                # Past the top: the name is resolved from nothing, so report the bare dotted tail ("..training.x"
                # from qground/x.py escapes the package).
                anchor = parts[:keep] if keep > 0 else []
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from . import x`` / ``from pkg import x`` may import a submodule x: check pkg.x too.
            names = [base] + [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
        if names:
            text = (ast.get_source_segment(source, node) or ast.dump(node)).splitlines()[0]
            found += [(node.lineno, name, text) for name in names if name]
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    """``importlib.import_module``, ``import_module`` or ``__import__``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def forbidden_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, source text) of each import in ``source`` whose top-level name is in ``FORBIDDEN``."""
    seen = set()
    bad = []
    for line, name, text in imported_modules(source, module, is_package):
        if name.split(".")[0] in FORBIDDEN and (line, text) not in seen:
            seen.add((line, text))
            bad.append((line, text))
    return bad


def package_modules() -> list[Path]:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 10, f"found only {len(paths)} modules under {PACKAGE}"
    return paths


def module_name(path: Path) -> tuple[str, bool]:
    """The dotted name of a module file under the repo root, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def test_qground_never_imports_training_bench_tests_or_app():
    problems = []
    for path in package_modules():
        name, is_package = module_name(path)
        for line, text in forbidden_imports(path.read_text(encoding="utf-8"), name, is_package):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not problems, "qground imports a layer above it (training, bench, tests, app):\n" + "\n".join(problems)


def test_the_walk_sees_the_imports_it_checks():
    """Not vacuous: the walk finds qground's own cross-module imports, at module level and inside functions."""
    sam = PACKAGE / "sam.py"
    found = {name for _, name, _ in imported_modules(sam.read_text(encoding="utf-8"), "qground.sam")}
    assert {"qground.records", "qground.files", "segment_anything"} <= found


@pytest.mark.parametrize(
    "code",
    [
        "import training",
        "import training.data.readers as readers",
        "import os, bench.latency",
        "from training.annotate import RegionLabel",
        "from tests import conftest",
        "from app import main",
        "def f():\n    if True:\n        from training.data import synth",
        "class C:\n    def m(self):\n        import app",
        "try:\n    pass\nexcept ImportError:\n    import bench",
        "from ... import training",
        "from ...training import annotate",
        "import importlib\nimportlib.import_module('training.calibrate')",
        "__import__('bench')",
        "import llama_pieces",
    ],
)
def test_the_check_catches_every_form_of_import(code):
    assert forbidden_imports(code, "qground.sub.module"), code


@pytest.mark.parametrize(
    "code",
    [
        "import trainingwheels",
        "from qground import training_config",
        "from . import app_state",
        "from .. import records",
        "from .training import x",  # qground.sub.training: inside the package
        "import qground.sam",
        "importlib.import_module(name)",
        "text = 'import training'",
    ],
)
def test_the_check_lets_package_and_lookalike_imports_through(code):
    assert forbidden_imports(code, "qground.sub.module") == []


def test_problems_name_the_module_and_line():
    source = "import os\n\n\ndef f():\n    from training.data.readers import decode_rle\n"
    assert forbidden_imports(source, "qground.x") == [(5, "from training.data.readers import decode_rle")]


def test_nothing_loads_modules_by_file_path():
    """Modules are imported by name, never loaded from a file path (which hides the dependency from the check above
    and from packaging)."""
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        top = Path(folder) == ROOT
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIPPED_DIRS and not d.endswith(".egg-info") and not (top and d in SKIPPED_TOP_DIRS)
        ]
        for file in files:
            path = Path(folder, file)
            relative = path.relative_to(ROOT).as_posix()
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if SPEC_LOADER.encode() in data:
                offenders.append(relative)
    assert not offenders, f"{SPEC_LOADER} in {offenders}: import the module by name instead"
