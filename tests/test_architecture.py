"""The architecture holds: no import circles among the project's modules, and the layer contracts in
pyproject.toml (import-linter) are kept; a change that breaks one fails with import-linter's own message."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("heterag", "corpora", "sandbox")


def import_cycles(*packages: str) -> list[list[str]]:
    """Every import circle among the modules of ``packages``: the strongly connected components of the
    module import graph with more than one module, each sorted. Counts every import statement, those
    inside functions and under ``if TYPE_CHECKING`` too (grimp's default)."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    g = nx.DiGraph()
    for module in graph.modules:
        g.add_node(module)
        for imported in graph.find_modules_directly_imported_by(module):
            g.add_edge(module, imported)
    return sorted(sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1)


def test_no_import_circles_among_the_projects_modules():
    cycles = import_cycles(*PACKAGES)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_import_cycles_finds_a_circle(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other are one circle."""
    pkg = tmp_path / "circular_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circular_pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from circular_pkg import a\n")
    (pkg / "c.py").write_text("from circular_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("circular_pkg") == [["circular_pkg.a", "circular_pkg.b"]]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(cwd), "HOME": str(cwd)}
    return subprocess.run([exe, "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_are_kept():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_upward_import_breaks_a_contract_naming_the_import(tmp_path):
    """A library module importing corpora fails with import-linter's message naming the importer, the
    imported module and the line."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "heterag" / "core" / "errors.py"
    lines = errors.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("from __future__")) + 1
    lines.insert(at, "import corpora.beir  # an upward import")
    errors.write_text("\n".join(lines) + "\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and "broken" in out.stdout
    assert f"heterag.core.errors -> corpora.beir (l.{at + 1})" in out.stdout, out.stdout
