"""``heterag sandbox run --store``: the same scenario on another store backend (issue #12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from heterag.cli import main
from sandbox.cli import override_store
from sandbox.scenario import ScenarioError, parse_scenario

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"source": "synthetic:120", "task": "scene_background",
             "splits": {"knowledge_base": {"count": 60}, "reference": {"count": 30}, "candidates": {"count": 10},
                        "test": {"count": 20}}},
    "rag": {"store": "faiss", "top_k": 5},
    "attack": {"name": "m3att", "poison_count": 2, "steps": 5, "warmup_steps": 2},
    "bootstrap": 50,
}


def test_store_override_takes_any_store_spec() -> None:
    scn = parse_scenario(json.loads(json.dumps(TINY)))
    assert override_store(scn, "chroma-http://127.0.0.1:8000").rag.store == "chroma-http://127.0.0.1:8000"
    assert override_store(scn, "lancedb").rag.store == "lancedb"
    assert scn.rag.store == "faiss"  # the scenario itself is unchanged


def test_unknown_store_scheme_lists_the_choices() -> None:
    scn = parse_scenario(json.loads(json.dumps(TINY)))
    with pytest.raises(ScenarioError) as info:
        override_store(scn, "nosuch://x")
    msg = str(info.value)
    assert "--store" in msg and "nosuch://x" in msg and "chroma-http://HOST:PORT" in msg and "\n" not in msg
    bad = json.loads(json.dumps(TINY))
    bad["rag"]["store"] = "nosuch"
    with pytest.raises(ScenarioError, match="rag.store"):
        parse_scenario(bad)


def test_same_scenario_same_metrics_on_another_embedded_store(heterag_home: Path, tmp_path: Path) -> None:
    """Small collections are searched exactly by faiss and lancedb: the same seed gives the same report."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    reports = {}
    for store in ("faiss", "lancedb"):
        assert main(["sandbox", "run", str(path), "--out", str(tmp_path / store), "--store", store]) == 0
        reports[store] = json.loads((tmp_path / store / "report.json").read_text())
    assert reports["faiss"]["collection"] != reports["lancedb"]["collection"]  # one experiment collection per store
    assert reports["faiss"]["metrics"] == reports["lancedb"]["metrics"]
    assert reports["faiss"]["per_query"] == reports["lancedb"]["per_query"]
