"""The attack sandbox against a live index: scenarios, reversible injection, clean-up, bad input, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import changed

from heterag import Document, content_fingerprint, open_collection
from heterag.cli import main
from heterag.core.errors import InvalidInputError
from sandbox.data import load_scenario_data
from sandbox.experiment import open_index
from sandbox.injection import (
    SANDBOX_TAG,
    LiveCollectionError,
    ReversibleInjection,
    SandboxBusyError,
    clean,
    list_journals,
)
from sandbox.runner import run_scenario
from sandbox.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]

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


def tiny(**changes) -> dict:
    return changed(TINY, changes)


def write(tmp_path: Path, scn: dict, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(scn))
    return p


# --------------------------------------------------------------------------- bad input


def test_malformed_yaml_is_one_line_naming_the_place(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {source: synthetic:50\nseed: 1\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    assert "malformed YAML at line" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("change, words", [
    ({"attack.name": "m4att"}, ["attack.name", "unknown attack 'm4att'", "m3att, random, query_copy, none"]),
    ({"defenses": [{"name": "firewall"}]}, ["defenses.0.name", "unknown defense 'firewall'", "consistency", "hubness"]),
    ({"rag.top_kk": 5}, ["rag.top_kk", "unknown key"]),
    ({"seed": "zero"}, ["seed", "integer"]),
    ({"bootstrap": -1}, ["bootstrap"]),
    ({"attack.access": "grey-box"}, ["attack.access"]),
    ({"metrics": ["asr@k", "vibes"]}, ["metrics", "vibes"]),
])
def test_scenario_errors_name_the_key(change, words):
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(tiny(**change))
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_data_file_and_missing_key(tmp_path):
    with pytest.raises(ScenarioError, match=r"data\.source: .*nowhere\.npz does not exist"):
        load_scenario_data(parse_scenario(tiny(**{"data.source": "nowhere.npz"}), base_dir=tmp_path).data, 0, tmp_path)
    scn = tiny()
    del scn["data"]
    with pytest.raises(ScenarioError, match="data: missing required key"):
        parse_scenario(scn)


def test_split_leaving_no_test_queries_is_refused():
    scn = parse_scenario(tiny(**{"data.splits.test": {"count": 0}}))
    with pytest.raises(ScenarioError, match="leaves no test queries"):
        run_scenario(scn)


def test_poison_budget_larger_than_candidate_pool_is_refused(heterag_home):
    scn = parse_scenario(tiny(**{"attack.poison_count": 11}))
    with pytest.raises(InvalidInputError, match=r"poison budget 11 is larger than the candidate pool \(10 images\)"):
        run_scenario(scn)
    assert not list_journals()  # nothing was injected


def test_white_box_needs_an_encoder_with_gradients():
    from sandbox.attacks.m3att import AttackInputs, build_m3att

    class NoGrad:
        identity, dim = "frozen-api", 8

        def encode_images(self, images, **kw):
            return np.ones((len(images), 8), dtype=np.float32)

    scn = parse_scenario(tiny())
    with pytest.raises(InvalidInputError) as exc:
        build_m3att(scn.attack, AttackInputs([], [], None), NoGrad(), 1)
    assert "gradient" in str(exc.value) and "\n" not in str(exc.value)


def test_live_collection_needs_allow_live_and_stays_untouched():
    pipe = open_collection("notes")
    pipe.ingest([Document.create("The clinic opens at nine.", id="n1")])
    before = content_fingerprint(pipe)
    with pytest.raises(LiveCollectionError, match="allow_live: true"):
        with ReversibleInjection(pipe, "notes") as inj:
            inj.inject([Document.create("poison", id="p1")])
    scn = parse_scenario(tiny(**{"rag.collection": "notes"}))
    with pytest.raises(LiveCollectionError, match="--allow-live"):
        run_scenario(scn)
    assert content_fingerprint(pipe) == before
    pipe.close()


def test_sandbox_clean_without_leftovers_says_so(capsys):
    open_collection("empty", purpose="experiment").close()
    assert main(["sandbox", "clean", "--collection", "empty"]) == 0
    assert "no sandbox leftovers" in capsys.readouterr().out
    assert main(["sandbox", "runs"]) == 0
    assert "no sandbox runs" in capsys.readouterr().out


# --------------------------------------------------------------------------- reversible injection


@pytest.fixture()
def exp():
    pipe = open_collection("exp", purpose="experiment")
    pipe.ingest([Document.create(f"Clean fact number {i} about the heart.", id=f"c{i}") for i in range(5)])
    yield pipe
    pipe.close()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_injection_is_removed_on_error_and_interrupt(exp, error):
    before = content_fingerprint(exp)
    inj = ReversibleInjection(exp, "exp")
    with pytest.raises(error):
        with inj:
            inj.inject([Document.create("The heart has five chambers.", id="p1")])
            assert exp.retrieve("how many chambers does the heart have", k=1)[0].doc_id == "p1"
            assert exp.store.get(where={SANDBOX_TAG: inj.run_id})
            journal = json.loads(inj.journal.path.read_text())
            assert journal["doc_ids"] == ["p1"] and journal["collection"] == "exp"
            raise error("boom")
    assert content_fingerprint(exp) == before and inj.outcome.identical and inj.outcome.clean
    assert not inj.journal.path.exists()


def test_injected_ids_must_be_new(exp):
    with pytest.raises(InvalidInputError, match="already exist"):
        with ReversibleInjection(exp, "exp") as inj:
            inj.inject([Document.create("Clean fact number 0 about the heart.", id="c0")])
    assert exp.store.get(where={"doc_id": "c0"})  # the clean document survived


HOLD = textwrap.dedent("""
    import sys, time
    from heterag import open_collection, Document
    from sandbox.injection import ReversibleInjection
    pipe = open_collection("exp")
    with ReversibleInjection(pipe, "exp", run_id="holder-run") as inj:
        inj.inject([Document.create("held poison", id="held")])
        print("in", flush=True)
        time.sleep(60)
""")


def test_second_run_on_the_same_collection_is_refused_naming_the_first(exp):
    before = content_fingerprint(exp)
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in"
        with pytest.raises(SandboxBusyError) as exc:
            with ReversibleInjection(exp, "exp"):
                pass
        assert "holder-run" in str(exc.value) and f"pid {proc.pid}" in str(exc.value)
        with pytest.raises(SandboxBusyError, match="holder-run"):
            clean(exp, "exp")
    finally:
        proc.send_signal(signal.SIGTERM)  # the holder removes its injection on SIGTERM
        assert proc.wait(timeout=60) != 0
    assert content_fingerprint(exp) == before and not list_journals("exp")


WRITER = textwrap.dedent("""
    import sys, time
    from heterag import Document, open_collection
    pipe = open_collection(sys.argv[1])
    for i in range(int(sys.argv[2])):
        pipe.ingest([Document.create(f"Other writer note {i} about kidneys and the liver.", id=f"other-{i}")])
        time.sleep(0.05)
    pipe.delete_documents(["other-0"])
    pipe.close()
""")


def test_scenario_while_another_process_ingests_keeps_its_documents(heterag_home):
    scn = parse_scenario(tiny())
    data = load_scenario_data(scn.data, scn.seed)
    pipe, name = open_index(scn, data)
    kb_docs = {r.metadata["doc_id"] for r in pipe.store.get()}
    pipe.close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, name, "40"])
    try:
        report = run_scenario(scn)
    finally:
        assert writer.wait(timeout=300) == 0
    pipe = open_collection(name, create=False)
    try:
        docs = {r.metadata["doc_id"] for r in pipe.store.get()}
        assert docs == kb_docs | {f"other-{i}" for i in range(1, 40)}  # all of the other writer's, none of ours
        assert not pipe.store.get(where={SANDBOX_TAG: {"$ne": ""}})
    finally:
        pipe.close()
    if report["fingerprint_before"] != report["fingerprint_after"]:
        assert report["fingerprint_explained"] and "another writer" in report["fingerprint_explained"][0]


# --------------------------------------------------------------------------- kill -9 and clean


def test_kill_9_mid_injection_then_clean_restores_the_fingerprint(tmp_path, heterag_home):
    scn_dict = tiny(**{"attack.steps": 2, "data.source": "synthetic:400", "data.splits.test.count": 300})
    scn = parse_scenario(scn_dict)
    data = load_scenario_data(scn.data, scn.seed)
    pipe, name = open_index(scn, data)
    before = content_fingerprint(pipe)
    kb_count = pipe.store.count()
    pipe.close()
    path = write(tmp_path, scn_dict)
    env = {**os.environ, "HETERAG_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "heterag.cli", "sandbox", "run", str(path), "--out", str(tmp_path / "out")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until the poisons are in the index (the run then asks 300 queries)
            js = list_journals(name)
            if js and js[0].doc_ids:
                p = open_collection(name, create=False)
                n = p.store.count()
                p.close()
                if n > kb_count:
                    break
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.2)
        else:
            pytest.fail("the run never injected")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    pipe = open_collection(name, create=False)
    dirty = content_fingerprint(pipe)
    pipe.close()
    assert dirty != before  # the killed run left its poisons
    out = subprocess.run([sys.executable, "-m", "heterag.cli", "sandbox", "runs"], capture_output=True, text=True, env=env)
    assert name in out.stdout and "leftover" in out.stdout
    out = subprocess.run([sys.executable, "-m", "heterag.cli", "sandbox", "clean", "--collection", name],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "removed 2 injected document(s)" in out.stdout, out.stdout + out.stderr
    pipe = open_collection(name, create=False)
    after = content_fingerprint(pipe)
    pipe.close()
    assert after == before, before.diff(after)
    assert not list_journals(name)
    print(f"kill -9 test: before {before.digest}, after kill {dirty.digest}, after clean {before.digest}")


# --------------------------------------------------------------------------- the CI scenario


def test_ready_made_synthetic_scenario_reports_every_required_key(tmp_path):
    out = tmp_path / "report"
    t = time.perf_counter()
    assert main(["sandbox", "run", str(ROOT / "eval" / "scenarios" / "m3att_synthetic.yaml"), "--out", str(out)]) == 0
    assert time.perf_counter() - t < 240
    r = json.loads((out / "report.json").read_text())
    for key in ("scenario", "seed", "versions", "wall_seconds", "stage_seconds", "fingerprint_before", "fingerprint_after",
                "metrics"):
        assert key in r, key
    assert r["fingerprint_before"] == r["fingerprint_after"]
    m = r["metrics"]
    for name in ("asr@5", "asr_bound@5", "poisoned_per_query@5", "accuracy_clean", "accuracy_attacked",
                 "accuracy_drop_normalised", "misinformation_rate", "poison_rate", "asr@5[defense=consistency]",
                 "accuracy_clean[defense=hubness]", "accuracy_attacked[defense=purify]", "rejected_clean[defense=hubness]"):
        assert set(m[name]) == {"value", "ci_low", "ci_high"}, name
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"], name
    assert m["asr@5"]["value"] >= 0.2  # 4 poisons in 200 items reach a fifth of unseen queries
    assert m["poison_rate"]["value"] == pytest.approx(4 / 204)
    assert r["versions"]["python"] and r["stage_seconds"]["attack"] > 0
    assert {"asr_vs_rate.png", "defenses.png", "pgd_similarity.png"} <= {p.name for p in out.glob("*.png")}
    assert "## Defenses" in (out / "report.md").read_text()


def test_same_seed_same_numbers_and_random_baseline_is_weaker(tmp_path):
    a = run_scenario(parse_scenario(tiny()))
    b = run_scenario(parse_scenario(tiny()))
    assert a["metrics"] == b["metrics"]
    rnd = run_scenario(parse_scenario(tiny(**{"attack.name": "random"})))
    assert rnd["metrics"]["asr@5"]["value"] < a["metrics"]["asr@5"]["value"]


def test_bound_scores_a_vector_exactly_as_the_pipeline_scores_that_poison(heterag_home):
    """The upper bound's simulated score of a poison equals the live pipeline's fused score for it."""
    from corpora.synthetic_scenes import generate_scenes
    from sandbox.data import Query
    from sandbox.runner import _chunk_vectors, fused_scores, query_vectors

    scenes = list(generate_scenes(30, seed=4, size=64))
    pipe = open_collection("bound", purpose="experiment", store="faiss", retrieval="dense")  # a scenario's default
    pipe.ingest([s.to_document() for s in scenes[:25]])
    poison = Document.create("A small red star on a noisy teal background.", image=scenes[25].to_document().image, id="px")
    queries = [Query(t, s.to_document().image, "", s.id) for s, t in zip(scenes[26:], ("What colour is the star?", None,
                                                                                         "How many objects are there?", None),
                                                                          strict=True)]
    with ReversibleInjection(pipe, "bound") as inj:
        inj.inject([poison])
        v = pipe.image_store.get(where={"doc_id": "px"}, include_vectors=True)[0].vector
        predicted = fused_scores(pipe, query_vectors(pipe, queries), v[None, :], _chunk_vectors(pipe, ["px"]))[:, 0]
        for q, want in zip(queries, predicted, strict=True):
            got = [h.score for h in pipe.retrieve(q.text, image=q.image, k=30) if h.doc_id == "px"]
            assert got and max(got) == pytest.approx(float(want), abs=1e-5), q.text
    assert inj.outcome.identical
    pipe.close()


def test_a_second_interrupt_during_clean_up_does_not_stop_it(exp, monkeypatch):
    before = content_fingerprint(exp)
    original = ReversibleInjection.remove

    def remove_while_interrupted(self):
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, right as clean-up starts
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(ReversibleInjection, "remove", remove_while_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with ReversibleInjection(exp, "exp") as inj:
            inj.inject([Document.create("The heart has five chambers.", image=None, id="p1")])
            raise KeyboardInterrupt
    assert content_fingerprint(exp) == before and not list_journals("exp")
    with pytest.raises(KeyboardInterrupt, match="signal"):  # a signal during a clean exit is raised after clean-up
        with ReversibleInjection(exp, "exp") as inj:
            inj.inject([Document.create("The heart has five chambers.", id="p2")])
    assert content_fingerprint(exp) == before


def test_leftovers_of_a_crashed_run_are_refused_until_cleaned(exp):
    exp.ingest([Document.create("Leftover poison.", id="old", metadata={SANDBOX_TAG: "crashed-run"})])
    scn = parse_scenario(tiny(**{"rag.collection": "exp", "rag.allow_live": True, "attack.name": "none"}))
    with pytest.raises(SandboxBusyError, match="crashed-run.*heterag sandbox clean --collection exp"):
        run_scenario(scn)
    assert "removed 1 injected document" in clean(exp, "exp").summary()


class Killed(BaseException):
    """Stands for SIGKILL in the middle of a write: nothing after it runs, not even the clean-up."""


@pytest.mark.parametrize("dies_in", ["store", "image_store"])
def test_a_run_killed_between_an_image_file_and_its_records_is_cleaned_without_a_trace(heterag_home, dies_in):
    """Killed after the poison's image file is written but before its chunks (``store``) or its image record
    (``image_store``): the clean-up removes the file too, and the fingerprint (which counts files) is equal."""
    from corpora.synthetic_scenes import generate_scenes

    scenes = list(generate_scenes(4, seed=9, size=64))
    pipe = open_collection("killed", purpose="experiment", store="faiss")
    pipe.ingest([s.to_document() for s in scenes[:3]])
    before = content_fingerprint(pipe)
    poison = Document.create("A small red star on a noisy teal background.", image=scenes[3].to_document().image, id="px")

    def die(records):
        raise Killed

    store = getattr(pipe, dies_in)
    store.upsert = die  # this instance only
    inj = ReversibleInjection(pipe, "killed")
    inj.__enter__()  # no __exit__: the process is gone
    with pytest.raises(Killed):
        inj.inject([poison])
    inj._restore_signals()
    inj._lock.release()  # a killed process's lock goes with it
    del store.upsert
    assert content_fingerprint(pipe) != before  # the file (and in one case the chunks) are in
    assert json.loads(inj.journal.path.read_text())["image_shas"] == [poison.image.sha256]
    clean(pipe, "killed")
    assert content_fingerprint(pipe) == before, before.diff(content_fingerprint(pipe))
    assert not list_journals("killed")
    pipe.close()


def test_bad_out_folder_is_refused_before_any_work(tmp_path, capsys):
    path = write(tmp_path, tiny())
    (tmp_path / "afile").write_text("x")
    t = time.perf_counter()
    assert main(["sandbox", "run", str(path), "--out", str(tmp_path / "afile")]) == 2
    assert time.perf_counter() - t < 10
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists and is not a folder" in err


def test_report_json_is_strict_json_for_a_baseline(tmp_path):
    path = write(tmp_path, tiny(**{"attack.name": "query_copy"}))
    assert main(["sandbox", "run", str(path), "--out", str(tmp_path / "qc")]) == 0

    def no_nan(x):
        raise ValueError(f"non-standard JSON constant {x}")

    r = json.loads((tmp_path / "qc" / "report.json").read_text(), parse_constant=no_nan)
    assert r["poison_count"] == r["data"]["test_images"] == 20  # one poison per test image, as reported
    assert r["metrics"]["asr@5"]["value"] > 0.9  # the query's own image is found first
    assert "query_copy` baseline" in (tmp_path / "qc" / "report.md").read_text()
