"""Break tests for issue #10 (soft-prompt adapters): odd option values, hand-edited adapter JSON,
untitled collections and deep prompts shared between threads. Small data and the packaged MiniLM."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from test_adapters import TOPICS, _beir, _deep_adapter, _prompt_adapter, _run

from heterag import Document, FingerprintMismatchError, InvalidInputError
from heterag.encoding.adapters import AdaptedEncoder, load_adapter
from heterag.training.prompts import TuneConfig, build_unit_index, pseudo_pairs


@pytest.mark.parametrize("field,value", [("lr", -1.0), ("lr", 0.0), ("lr", float("nan")), ("patience", 0), ("patience", -1),
                                         ("temperature", float("inf")), ("seed", -1), ("threads", -2), ("threads", 0)])
def test_tune_config_refuses_bad_lr_patience_temperature_seed_threads(field, value):
    """``--lr -1`` used to end in a torch ValueError traceback; ``--patience -1`` trained and reported
    'no held-out improvement for -1'."""
    with pytest.raises(InvalidInputError, match=field):
        TuneConfig(**{field: value})


def test_cli_tune_negative_lr_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = _beir(tmp_path / "b")
    code, _, err = _run(capsys, "tune", str(root), "--out", str(tmp_path / "x"), "--lr", "-1")
    assert code == 2 and "lr must be > 0" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x*"))


@pytest.mark.parametrize("field,value,deep", [("prompt_tokens", 4.5, False), ("depth", 6.5, True), ("hidden", "384", False),
                                              ("prompt_tokens", True, False)])
def test_adapter_json_with_a_non_integer_size_is_refused(tmp_path, encoder, field, value, deep):
    """A JSON naming P=4.5 (or depth 6.5) used to load as P=4 (depth 6): the file names another P than the tensor."""
    a = _deep_adapter(encoder, P=4) if deep else _prompt_adapter(encoder, P=4)
    _, j = a.save(tmp_path / "a")
    meta = json.loads(j.read_text())
    meta[field] = value
    j.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match=f"{field} must be a whole number") as e:
        load_adapter(tmp_path / "a")
    assert "\n" not in str(e.value)


def test_adapter_json_with_a_non_object_training_record_is_one_line_error(tmp_path, encoder):
    """``"training": [1, 2]`` used to raise a bare TypeError from ``dict()``."""
    _, j = _prompt_adapter(encoder, P=4).save(tmp_path / "a")
    meta = json.loads(j.read_text())
    meta["training"] = [1, 2]
    j.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="training must be an object"):
        load_adapter(tmp_path / "a")


def test_title_pseudo_pairs_on_untitled_documents_suggest_another_kind(encoder):
    """The README's ``heterag tune --collection NAME`` on plain text files (no titles) finds no pair:
    the note says which pseudo kinds work without titles."""
    from heterag import chunk_document, make_view

    cds = [chunk_document(Document.create(text, id=f"d{i}"), encoder.tokenize, 64) for i, (_, text, _) in enumerate(TOPICS)]
    view = make_view("naive")
    units = build_unit_index(cds, view, encoder)
    ps = pseudo_pairs(cds, view, encoder, units, n=5, seed=0, kind="title")
    assert not ps.pairs and any("'sentence'" in n for n in ps.notes)
    ok = pseudo_pairs(cds, view, encoder, units, n=5, seed=0, kind="sentence", min_words=3)
    assert ok.pairs  # the suggested kind does find pairs


def test_deep_adapter_and_plain_encoder_in_threads_match_serial_runs(encoder):
    """The deep prompt's layer hooks act through a context variable: a deep adapter and the plain
    encoder sharing one model in concurrent threads give exactly their serial vectors."""
    ad = AdaptedEncoder(encoder, _deep_adapter(encoder, P=3, sides="shared"))
    texts = [f"{t} {x}" for t, x, _ in TOPICS]
    queries = [q for _, _, q in TOPICS]
    serial = {"q": ad.encode_queries(queries), "v": ad.encode(texts), "p": encoder.encode(texts)}
    jobs = {"q": lambda: ad.encode_queries(queries), "v": lambda: ad.encode(texts), "p": lambda: encoder.encode(texts)}
    got: dict[str, list[np.ndarray]] = {k: [] for k in jobs}
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            for _ in range(3):
                got[key].append(jobs[key]())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert np.abs(serial["p"] - serial["v"]).max() > 1e-3  # the deep prompt does change the vectors
    for key, runs in got.items():
        for r in runs:
            np.testing.assert_allclose(r, serial[key], atol=1e-5)


def test_adapting_an_adapted_encoder_is_one_line_error(tmp_path, encoder):
    """``adapt(adapt(enc, A), B)`` used to raise AttributeError ('_transformer')."""
    from heterag.encoding.adapters import adapt

    a = _prompt_adapter(encoder, P=4)
    a.save(tmp_path / "a")
    once = adapt(encoder, tmp_path / "a")
    with pytest.raises(InvalidInputError, match="already has adapter .*adapt its base encoder"):
        adapt(once, tmp_path / "a")
    assert adapt(once.base, a).adapter_hash == once.adapter_hash


def test_open_collection_takes_an_adapter_object(tmp_path, encoder):
    """``open_collection(name, adapter=Adapter)`` (as ``adapt`` takes) used to raise TypeError from Path()."""
    from heterag import open_collection

    docs = [Document.create(text, title=title, id=f"d{i}") for i, (title, text, _) in enumerate(TOPICS)]
    a = _prompt_adapter(encoder, P=4)
    a.save(tmp_path / "a")
    rag = open_collection("bt", adapter=a, view="naive")
    rag.ingest(docs[:3])
    assert rag.fingerprint.adapter == a.hash and rag.retrieve(TOPICS[0][2], k=1)[0].doc_id == "d0"
    rag.close()
    rag = open_collection("bt", adapter=load_adapter(tmp_path / "a"))  # the same adapter, loaded from disk
    assert rag.retrieve(TOPICS[0][2], k=1)[0].doc_id == "d0"
    rag.close()
    # an unsaved adapter object: the re-embed hint must not say "--adapter none"
    with pytest.raises(FingerprintMismatchError, match="reembed --collection bt --adapter PATH") as e:
        open_collection("bt", adapter=_prompt_adapter(encoder, P=4, seed=5))
    assert "--adapter none" not in str(e.value)


def test_cli_tune_unwritable_out_is_one_line_before_training(tmp_path, capsys):
    """``--out`` under a file (or an unwritable folder) used to train, then end in a FileNotFoundError traceback."""
    root = _beir(tmp_path / "b")
    (tmp_path / "afile").write_text("x")
    code, out, err = _run(capsys, "tune", str(root), "--out", str(tmp_path / "afile" / "sub" / "x"), "--epochs", "1")
    assert code == 2 and "cannot write the adapter" in err and len(err.strip().splitlines()) == 1 and not out


def test_adapter_save_into_a_file_path_is_one_line_error(tmp_path, encoder):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidInputError, match="cannot write the adapter"):
        _prompt_adapter(encoder, P=2).save(tmp_path / "afile" / "x")
    assert (tmp_path / "afile").read_text() == "x"
