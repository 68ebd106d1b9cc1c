"""Membership audit (sandbox.audit) and the no-signal rule (sandbox.calibration): a verdict, or a result in a
sandbox report, only where a method's calibration shows signal."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from corpora.synthetic_scenes import generate_scenes
from heterag import InvalidInputError, content_fingerprint, open_collection
from heterag.cli import main
from sandbox.audit import audit_images, read_inputs
from sandbox.calibration import NO_SIGNAL, auc, judge, permutation_pvalue

ROOT = Path(__file__).resolve().parents[1]
SIZE = 96
#: A caption that names no object: the extractive generator can never say what a mask hides.
GENERIC = "A picture from the archive."


# --------------------------------------------------------------------------- the criterion


def test_signal_needs_p_t_above_its_floor_and_a_shadow_auc_above_chance():
    assert not judge("mrm", p_t=0.01).signal and "floor" in judge("mrm", p_t=0.01).reason
    assert judge("mrm", p_t=0.3).signal  # a run's MrM pass: members only
    # perfect separation of 4 + 4: exact permutation p = 1 / C(8, 4) = 1/70
    s = judge("mba", [0.9, 0.8, 0.7, 0.95], [0.1, 0.2, 0.0, 0.3])
    assert s.signal and s.auc == 1.0 and s.p_value == pytest.approx(1 / 70)
    # identical scores: AUC 0.5, p = 1: no signal; p_t above the floor does not rescue a flat shadow AUC
    s = judge("mrm", [0.5] * 8, [0.5] * 8, p_t=0.4)
    assert not s.signal and s.auc == 0.5 and s.p_value == 1.0
    # 3 + 3 can never reach 0.05 (1 / C(6, 3) = 0.05)
    assert not judge("mba", [1, 1, 1], [0, 0, 0]).signal
    # reversed scores are not signal (one-sided)
    assert not judge("mba", [0, 0, 0, 0], [1, 1, 1, 1]).signal
    assert auc([1, 0], [0]) == 0.75
    big = permutation_pvalue(np.r_[np.ones(15), np.zeros(5)], np.zeros(20), seed=1)  # C(40, 20) > 20,000: random
    assert 0 < big < 0.01
    with pytest.raises(InvalidInputError):
        judge("mba")


# --------------------------------------------------------------------------- sandbox run


def test_a_run_whose_calibration_finds_no_signal_marks_mrm_not_a_result(tmp_path, capsys):
    """Captions that name no object: the extractive generator never names what a mask hides, p_t sits at its
    floor. Before the rule the report and the summary line gave MrM's AUC (0.5) as a result."""
    from corpora.synthetic_scenes import write_caption_folder

    folder = write_caption_folder(tmp_path / "scenes", 28, seed=4, size=SIZE)
    captions = folder / "captions.jsonl"
    rows = [json.loads(line) for line in captions.read_text().splitlines()]
    captions.write_text("".join(json.dumps({**r, "caption": GENERIC}) + "\n" for r in rows))
    from sandbox.scenario import load_scenario

    d = load_scenario(ROOT / "eval" / "scenarios" / "mrm_synthetic.yaml").model_dump(
        mode="json", by_alias=True, exclude={"base_dir"}, exclude_unset=True)
    d["data"] = {"source": str(folder), "splits": {"knowledge_base": {"count": 12}, "reference": {"count": 4},
                                                   "candidates": {"count": 0}, "test": {"count": 8}}}
    d["mrm"].update(methods=["mrm", "qb-mia"], members=6, shadow=4, sets=10, set_sizes=[1], label_keys=None)
    d.update(bootstrap=20, defenses=[])
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(d))
    out = tmp_path / "report"
    assert main(["sandbox", "run", str(scenario), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    r = json.loads((out / "report.json").read_text())
    assert r["p_t"]["none"] <= 0.01 and r["signal"]["method=mrm"]["signal"] is False
    assert "auc[method=mrm]" not in r["metrics"] and "set_auc@1[method=mrm]" not in r["metrics"]
    assert "queries_per_target[method=mrm]" in r["metrics"]  # what it cost is still reported
    assert "method=mrm" not in r["roc"] and r["passes"][0] == "method=mrm"
    assert all(t["p_value"] is None for t in r["per_target"])
    assert f"mrm: {NO_SIGNAL}" in line and "mrm AUC" not in line and "qb-mia AUC" in line
    md = (out / "report.md").read_text()
    assert f"| mrm | **{NO_SIGNAL}** |" in md and "p_t at its floor" in md


# --------------------------------------------------------------------------- the audit


def _items(n: int, seed: int, generic: bool = False):
    items = [s.to_annotated() for s in generate_scenes(n, seed=seed, size=SIZE)]
    return [dataclasses.replace(it, text=GENERIC) for it in items] if generic else items


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One collections folder for the module (the sandbox's locks and journals live there too), with two
    experiment collections of 24 synthetic scenes: ``named`` (captions name every object) and ``generic``
    (captions name none)."""
    home = tmp_path_factory.mktemp("audit-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HETERAG_HOME", str(home))
        for name, generic in (("named", False), ("generic", True)):
            pipe = open_collection(name, store="faiss", purpose="experiment")
            try:
                assert not pipe.ingest([it.to_document() for it in _items(24, 1, generic)], progress=False).failures
            finally:
                pipe.close()
        yield home


@pytest.fixture(autouse=True)
def heterag_home(home, monkeypatch):
    """This module's tests share :func:`home` (conftest's per-test folder would hide its collections)."""
    monkeypatch.setenv("HETERAG_HOME", str(home))
    return home


def _png(item) -> bytes:
    return item.image.data


@pytest.fixture(scope="module")
def bad_inputs(home, tmp_path_factory):
    """One audit of ``generic`` (the fastest: no signal, so nothing is queried after the calibration) with a
    member, a corrupt image, a 60 MB image and a zip holding a non-image next to an image."""
    folder = tmp_path_factory.mktemp("audit-inputs")
    member, non_member = _items(24, 1, generic=True)[3], _items(1, 99)[0]
    (folder / "member.png").write_bytes(_png(member))
    (folder / "corrupt.png").write_bytes(_png(non_member)[:120])  # a PNG header, then nothing
    big = folder / "big.png"
    with open(big, "wb") as f:  # a valid PNG followed by 60 MB (decoders stop at IEND; the file is 60 MB)
        f.write(_png(non_member))
        f.write(b"\0" * (60 * 2**20))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photos/non-member.png", _png(non_member))
        z.writestr("photos/notes.pdf", b"%PDF-1.4 not an image")
        z.writestr("photos/readme.txt", "a text without an image of its name")
    (folder / "batch.zip").write_bytes(buf.getvalue())
    report = audit_images("generic", [folder / n for n in ("member.png", "corrupt.png", "big.png", "batch.zip")],
                          shadow=_items(16, 7919, generic=True))
    return report


def test_audit_calibrates_first_then_gives_verdicts_with_masks_and_trial_answers():
    """Annotated images (the auditor can say what its own images show): MrM's masks are labelled from the
    annotations, for the shadow set too; each image gets a verdict by the threshold calibrated on the shadow set."""
    pipe = open_collection("named", create=False)
    try:
        before = content_fingerprint(pipe).digest
        report = audit_images(pipe, [_items(24, 1)[3], _items(1, 99)[0]], names=["member", "non-member"],
                              shadow=_items(16, 7919))
        after = content_fingerprint(pipe).digest
    finally:
        pipe.close()
    assert before == after and report.fingerprint_identical  # the shadow members went in and out again
    assert report.signals["mrm"].signal and report.signals["mrm"].p_value < 0.05 and report.p_t > 0.01
    assert report.statement is None and "mrm" in report.usable
    assert [im.name for im in report.images] == ["member", "non-member"]
    for im in report.images:
        assert im.verdict in ("member", "non-member") and 0 <= im.p_value <= 1 and im.method == "mrm"
        assert im.masks and all(m.answers and len(m.answers) == len(m.named) and m.image.width == SIZE
                                for m in im.masks)
        assert im.verdict == ("member" if im.p_value >= report.thresholds["mrm"] else "non-member")
        t, op = report.thresholds["mrm"], "≥" if im.p_value >= report.thresholds["mrm"] else "<"
        assert (f"{im.name}: {im.verdict} (mrm: p = {im.p_value:.3g} {op} {t:.3g}, the threshold calibrated on the "
                "shadow set; H0: member)") in report.summary()


def test_a_corrupt_image_is_one_line_and_the_others_are_audited(bad_inputs):
    report = bad_inputs
    lines = [e for e in report.errors if "corrupt.png" in e]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert report.inputs == ["member.png", "batch.zip/photos/non-member.png"]  # the others are audited
    assert report.statement and not report.images  # this collection gives no signal: the sentence covers them
    assert lines[0].startswith("corrupt.png:") and "/tmp" not in lines[0]  # the user's name, not a private path


def test_a_60_mb_image_is_one_line_and_the_others_are_audited(bad_inputs):
    report = bad_inputs
    lines = [e for e in report.errors if "big.png" in e]
    assert len(lines) == 1 and "60.0 MiB, over the 50 MiB limit" in lines[0] and len(report.inputs) == 2


def test_a_zip_holding_a_non_image_is_one_line_and_its_images_are_audited(bad_inputs):
    report = bad_inputs
    lines = [e for e in report.errors if "notes.pdf" in e]
    assert lines == ["batch.zip: photos/notes.pdf: not an image (.pdf); skipped"]
    assert "batch.zip/photos/non-member.png" in report.inputs
    texts = [e for e in report.errors if "readme" in e]  # a .txt without its image: not an image either
    assert texts == ["batch.zip: photos/readme.txt: not an image (a .txt member is only read as the text of the image "
                     "with the same name, and the zip has no image readme.*); skipped"]
    assert len(report.errors) == 4


def test_an_audit_without_signal_says_so_in_one_sentence_and_gives_no_verdicts(home, tmp_path):
    """The offline extractive generator on scenes whose captions name no object: MrM's p_t sits at its floor,
    MBA cannot tell members from non-members; the audit says so and judges nothing."""
    image = tmp_path / "scene.png"
    image.write_bytes(_png(_items(24, 1, True)[5]))
    report = audit_images("generic", [image], shadow=_items(16, 7919, generic=True))
    assert not report.usable and report.images == [] and report.errors == []
    assert report.signals["mrm"].p_t <= 0.01 and not report.signals["mba"].signal
    s = report.statement
    assert s.startswith("No method has signal on collection 'generic'") and s.endswith("so no image gets a verdict.")
    assert s.count(". ") == 0 and "\n" not in s  # one sentence
    assert "member (p" not in report.summary() and s in report.summary()


def test_audit_settings_and_inputs_are_checked_in_one_line(home, tmp_path):
    with pytest.raises(InvalidInputError, match="at least 8"):
        audit_images("named", [tmp_path / "x.png"], shadow=_items(4, 7919))
    with pytest.raises(InvalidInputError, match="choose from: mrm, mba"):
        audit_images("named", [tmp_path / "x.png"], methods=["qb-mia"])
    (tmp_path / "ok.png").write_bytes(_png(_items(1, 99)[0]))
    with pytest.raises(InvalidInputError, match="not already in collection 'named'"):
        audit_images("named", [tmp_path / "ok.png"], shadow=_items(24, 1))  # the collection's own scenes
    images, errors = read_inputs([tmp_path / "missing.png", tmp_path / "missing.zip"])
    assert images == [] and len(errors) == 2 and all("\n" not in e for e in errors)
    report = audit_images("named", [tmp_path / "missing.png"], shadow=_items(16, 7919))
    assert report.images == [] and report.statement == "No image could be read, so nothing was audited."


def test_the_panel_renders_escaped_text_only():
    from sandbox.app.audit import render
    from sandbox.audit import AuditReport, ImageAudit, MethodVerdict

    r = AuditReport("c<script>", errors=["<img src=x onerror=alert(1)>: not an image"])
    im = ImageAudit("<b>x</b>.png", "member", 0.4, "mrm", {"mrm": MethodVerdict("mrm", "member", 0.4, "member", 0.4)})
    r.images.append(im)
    out = render(r)
    assert "<script>" not in out and "<img src=x" not in out and "&lt;b&gt;x&lt;/b&gt;.png" in out


def test_verdict_lines_state_the_threshold_they_used():
    from sandbox.app.audit import render
    from sandbox.audit import AuditReport, ImageAudit, MethodVerdict

    mrm = MethodVerdict("mrm", "non-member", 0.491, "member", 0.491, threshold=0.62)
    mba = MethodVerdict("mba", "member", 0.03, "non-member", 0.8, threshold=0.6)
    assert mrm.describe() == "non-member (mrm: p = 0.491 < 0.62, the threshold calibrated on the shadow set; H0: member)"
    assert mba.describe() == ("member (mba: score 0.8 ≥ 0.6, the threshold calibrated on the shadow set; p = 0.03, "
                              "H0: non-member)")
    im = ImageAudit("x.png", "non-member", 0.491, "mrm", {"mrm": mrm, "mba": mba})
    assert im.line() == "x.png: " + mrm.describe()
    r = AuditReport("c")
    r.images.append(im)
    out = render(r)
    assert "p = 0.491 &lt; 0.62, the threshold calibrated on the shadow set" in out and "score 0.8 ≥ 0.6" in out


def test_the_app_takes_only_bounded_synthetic_shadow_sets_or_data_sources(tmp_path, monkeypatch):
    """From the app, no server path is read for the shadow set, and the refusal is the same whether the path
    exists or not (it says nothing about the server's files)."""
    import gradio as gr

    from sandbox.app.audit import run_audit

    (tmp_path / "scenes").mkdir()
    (tmp_path / "x.png").write_bytes(_png(_items(1, 99)[0]))
    messages = set()
    for shadow in ("/etc", str(tmp_path / "scenes"), str(tmp_path / "missing"), "../../etc", "~/x", "file:///etc"):
        with pytest.raises(gr.Error) as err:  # the panel's handler refuses before any work
            run_audit([str(tmp_path / "x.png")], "named", shadow, "synthetic", "extractive", "", "", False, progress=None)
        messages.add(err.value.message)
    refusal = ("shadow: give synthetic:N[:SEED[:SIZE]] (N from 8 to 500, SIZE from 32 to 512) or data:NAME "
               "(a ready-made source in the data folder); the app reads no other server path")
    assert messages == {refusal}, messages
    from sandbox.audit import check_app_shadow, load_shadow

    for shadow in ("/etc", str(tmp_path / "scenes"), str(tmp_path / "missing")):
        with pytest.raises(InvalidInputError, match=r"^shadow: give synthetic:N\[:SEED\[:SIZE\]\]") as exc:
            check_app_shadow(shadow)
        assert str(exc.value) == refusal
    for shadow in ("synthetic:501", "synthetic:16:1:513", "synthetic:16:1:8", "synthetic:4", "synthetic:16:99999999999",
                   "synthetic:1000000000000:1", "synthetic:x", "data:../../etc", "data:/etc"):
        with pytest.raises(InvalidInputError) as exc:
            check_app_shadow(shadow)
        assert "\n" not in str(exc.value) and str(exc.value).startswith("shadow: ")
    assert check_app_shadow("synthetic:16:3:64") == "synthetic:16:3:64" and check_app_shadow("") == "synthetic:16"
    assert check_app_shadow("data:scenes") == "data:scenes"
    monkeypatch.setenv("HETERAG_DATA_DIR", str(tmp_path))
    with pytest.raises(InvalidInputError, match="shadow: data:scenes: not a folder in an image layout"):
        load_shadow("data:scenes")  # a data source is read from the data folder
    assert len(load_shadow("synthetic:8:3:32")) == 8
