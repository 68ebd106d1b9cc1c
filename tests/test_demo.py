"""The quick start's main job: `heterag ask` on a fresh machine indexes the demo corpus and answers with sources."""

from __future__ import annotations

import json

from heterag import list_collections
from heterag.cli import main


def test_quick_start_question_is_answered_from_the_python_reference(capsys):
    code = main(["ask", "How do I define a generator?", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)
    assert "demo" in list_collections()
    assert payload["sources"], "the answer must cite sources"
    assert all(s["doc_id"].startswith("pydoc:") for s in payload["sources"])
    text = payload["answer"].lower()
    assert "generator" in text and ("yield" in text or "function" in text)
    assert any("yield" in r["text"] for r in payload["retrieved"])
    # second question reuses the index (no re-ingest) and prints a readable answer
    code = main(["ask", "What does the with statement do?"])
    out = capsys.readouterr().out
    assert code == 0 and "Sources:" in out and "with" in out.lower()


def test_image_question_without_a_collection_uses_the_scenes_demo(tmp_path, capsys):
    from corpora import render_scene

    scene = render_scene(7)  # scene 7 of seed 0 is in the 300-scene demo
    path = tmp_path / "scene.jpg"
    scene.image.save(path, quality=70)
    code = main(["ask", "What colour is it?", "--image", str(path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and "demo-scenes" in list_collections()
    assert payload["retrieved"][0]["doc_id"] == scene.id and payload["retrieved"][0]["image"]
    assert payload["sources"] and payload["answer"]
