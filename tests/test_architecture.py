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


def _tiers() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "tiers")["layers"]
    return [name.strip() for layer in layers for name in layer.replace(":", "|").split("|")]


def test_every_part_of_heterag_has_a_place_in_the_layers():
    """A new folder or top-level module in heterag/ must be placed in the tiers contract, or no contract covers it."""
    graph = grimp.build_graph("heterag", cache_dir=None)
    placed = set(_tiers())
    unplaced = sorted(m for m in graph.find_children("heterag") if m not in placed)
    assert not unplaced, f"not in any layer of pyproject.toml's 'tiers' contract: {unplaced}"


LIBRARY = ("heterag.core", "heterag.encoding", "heterag.stores", "heterag.ingest", "heterag.retrieval",
           "heterag.generators", "heterag.pipeline", "heterag.collections", "heterag.evaluation")


def test_the_library_and_corpora_never_import_the_public_face():
    """``heterag/__init__.py`` re-exports every layer, so a library module importing it would import upwards."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    below = [m for m in graph.modules if m.startswith(tuple(p + "." for p in LIBRARY)) or m in LIBRARY
             or m == "corpora" or m.startswith("corpora.")]
    offenders = sorted(m for m in below if graph.direct_import_exists(importer=m, imported="heterag"))
    assert len(below) > 50 and not offenders, f"modules importing the heterag package itself: {offenders}"


class _Entry:
    """Stands in for an ``importlib.metadata.EntryPoint`` of the ``heterag.commands`` group."""

    def __init__(self, name, register):
        self.name, self.value, self._register = name, f"plugin_{name}:register", register

    def load(self):
        if isinstance(self._register, Exception):
            raise self._register
        return self._register


def test_the_sandbox_command_comes_through_the_entry_point():
    from importlib.metadata import entry_points

    from heterag.cli.commands import COMMAND_GROUP, build_parser

    assert {e.name: e.value for e in entry_points(group=COMMAND_GROUP)} == {"sandbox": "sandbox.command:register"}
    assert "sandbox" in build_parser()._subparsers._group_actions[0].choices


def test_a_broken_command_plugin_costs_only_its_own_command(monkeypatch, capsys, caplog, heterag_home):
    import heterag.cli.commands as commands

    def half_register(sub):  # adds its parser, then fails
        sub.add_parser("half")
        raise RuntimeError("half-installed")

    def misnamed(sub):
        sub.add_parser("other-name")
        return lambda args: 0

    monkeypatch.setattr(commands, "_plugin_entries", lambda: [_Entry("gone", ImportError("No module named 'gone'")),
                                                             _Entry("half", half_register), _Entry("misnamed", misnamed)])
    assert commands.main(["collections"]) == 0  # every other command works
    assert commands.main(["half"]) == 2
    assert capsys.readouterr().err == "heterag: error: command 'half' is not available: half-installed\n"
    warnings = caplog.text
    assert "command 'gone' (plugin_gone:register) not available: No module named 'gone'" in warnings
    assert "plugin_misnamed:register added no 'misnamed' command" in warnings
