"""Soft-prompt adapters (issue #10): the encoder path, files and their validation, training,
fingerprints, re-embedding and the CLI. Small data and the packaged MiniLM (or a tiny random BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from heterag import Document, FingerprintMismatchError, InvalidInputError, LateView, open_collection
from heterag.cli import main
from heterag.encoding.adapters import (
    AdaptedEncoder,
    Adapter,
    adapter_paths,
    base_weights_hash,
    encoder_weights_hash,
    init_prompt,
    load_adapter,
)
from heterag.training.prompts import PairSet, TrainPair, TuneConfig, beir_pairs, build_unit_index, pseudo_pairs, train_adapter

TOPICS = [
    ("Aspirin and heart attacks", "Daily low-dose aspirin reduced the rate of first heart attacks in middle-aged men. "
     "Bleeding in the stomach was the main side effect.", "Does aspirin prevent myocardial infarction?"),
    ("Vitamin D and bones", "Vitamin D supplements increased bone mineral density in older women. Fractures of the hip "
     "were less frequent after three years.", "Vitamin D strengthens the bones of elderly women."),
    ("Malaria vaccine trial", "A malaria vaccine protected about a third of African children from severe malaria. "
     "Protection waned after the first year.", "Can children be vaccinated against malaria?"),
    ("Smoking and lung cancer", "Cigarette smoking multiplied the risk of lung carcinoma by more than ten. Quitting "
     "halved the excess risk within a decade.", "Tobacco use causes cancer of the lung."),
    ("Exercise and depression", "Aerobic exercise three times a week lowered depression scores as much as medication "
     "in a randomised trial.", "Physical activity treats depressive symptoms."),
    ("Gut bacteria and obesity", "Mice given gut microbes from obese twins gained more fat than mice given microbes "
     "from lean twins.", "Intestinal microbiota influence weight gain."),
    ("Statins and cholesterol", "Statins lowered LDL cholesterol by forty percent and reduced strokes in patients "
     "with high cholesterol.", "Do statins lower blood lipids?"),
    ("Sleep and memory", "Students who slept eight hours after learning recalled more words than students kept "
     "awake through the night.", "Sleep consolidates memories."),
    ("Antibiotic resistance in hospitals", "Resistant staphylococcus infections spread between wards through the "
     "hands of staff. Hand hygiene cut the rate.", "Hand washing reduces MRSA transmission."),
    ("Coffee and liver disease", "Drinking coffee was associated with a lower risk of liver cirrhosis in a cohort of "
     "one hundred thousand adults.", "Coffee consumption protects the liver."),
    ("Salt and blood pressure", "Reducing dietary sodium lowered systolic blood pressure by five millimetres of "
     "mercury in hypertensive adults.", "Eating less salt reduces hypertension."),
    ("Breastfeeding and infections", "Breastfed infants had fewer ear and gut infections in their first year than "
     "formula-fed infants.", "Breast milk protects babies from infection."),
]


def _beir(root: Path, extra_qrels: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, (title, text, _) in enumerate(TOPICS):
            f.write(json.dumps({"_id": f"d{i}", "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i, (_, _, q) in enumerate(TOPICS):
            f.write(json.dumps({"_id": f"q{i}", "text": q}) + "\n")
    train = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(10)) + extra_qrels
    (root / "qrels" / "train.tsv").write_text(train)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in (10, 11)))
    return root


def _prompt_adapter(encoder, P: int = 4, sides: str = "shared", seed: int = 0) -> Adapter:
    tensors = ({"query_prompt": init_prompt(encoder, P, seed), "view_prompt": init_prompt(encoder, P, seed + 1)}
               if sides == "separate" else {"prompt": init_prompt(encoder, P, seed)})
    return Adapter(kind="prompt", base_model=encoder.identity, base_hash=encoder_weights_hash(encoder), prompt_tokens=P,
                   sides=sides, hidden=int(encoder.dim), tensors=tensors)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [Document.create(text, title=title, id=f"d{i}") for i, (title, text, _) in enumerate(TOPICS)]


# ---- encoder path --------------------------------------------------------------------------
def test_without_prompt_the_adapter_path_equals_the_encoder(encoder):
    texts = ["Vitamin D strengthens bones.", "short", "A longer sentence about a randomised trial in 500 patients."]
    plain = AdaptedEncoder(encoder, None)
    with torch.inference_mode():
        mine = plain.sentence_vectors(plain.content_ids(texts), "view").numpy()
    np.testing.assert_allclose(mine, encoder.encode(texts), atol=1e-5)


def test_prompt_goes_after_the_first_special_token_and_is_not_pooled(encoder):
    ad = AdaptedEncoder(encoder, _prompt_adapter(encoder, P=5))
    ids = ad.content_ids(["aspirin prevents heart attacks"])
    hidden, mask, offset = ad.hidden_states(ids, "query")
    n = len(ids[0])
    assert offset == 1 + 5 and hidden.shape[1] == 1 + 5 + n + 1
    assert mask[0].tolist() == [1] + [0] * 5 + [1] * (n + 1)  # [CLS], prompt (not pooled), text, [SEP]
    plain_hidden, _, plain_offset = AdaptedEncoder(encoder).hidden_states(ids, "query")
    assert plain_offset == 1
    # the text attends to the prompt: its contextual states move
    assert not torch.allclose(hidden[0, offset : offset + n], plain_hidden[0, 1 : 1 + n], atol=1e-3)


def test_sides_decide_which_vectors_change(encoder):
    texts = ["Coffee protects the liver.", "Salt raises blood pressure."]
    base_q, base_v = encoder.encode(texts), encoder.encode(texts)
    for sides, q_changes, v_changes in (("query", True, False), ("view", False, True), ("shared", True, True),
                                        ("separate", True, True)):
        ad = AdaptedEncoder(encoder, _prompt_adapter(encoder, sides=sides))
        q, v = ad.encode_queries(texts), ad.encode(texts)
        assert (not np.allclose(q, base_q, atol=1e-4)) == q_changes, sides
        assert (not np.allclose(v, base_v, atol=1e-4)) == v_changes, sides
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    sep = _prompt_adapter(encoder, sides="separate")
    ad = AdaptedEncoder(encoder, sep)
    assert not np.allclose(ad.encode_queries(texts), ad.encode(texts), atol=1e-4)  # two different prompts


def test_late_view_prepends_the_view_prompt_to_each_window(encoder, docs):
    from heterag import chunk_document

    cds = [chunk_document(d, encoder.tokenize, 16) for d in docs[:3]]
    view = LateView()
    _, plain = view.embed(cds, encoder)
    ad = AdaptedEncoder(encoder, _prompt_adapter(encoder, sides="view"))
    _, adapted = view.embed(cds, ad)
    assert adapted.shape == plain.shape and not np.allclose(adapted, plain, atol=1e-4)
    windows = [encoder.tokenize("a window of chunk tokens").ids]
    assert ad.token_embeddings(windows)[0].shape == (len(windows[0]), encoder.dim)  # prompt states are not returned
    q_only = AdaptedEncoder(encoder, _prompt_adapter(encoder, sides="query"))
    np.testing.assert_allclose(view.embed(cds, q_only)[1], plain, atol=1e-6)


def _deep_adapter(encoder, P: int = 3, sides: str = "query", seed: int = 0) -> Adapter:
    return Adapter(kind="prompt", base_model=encoder.identity, base_hash=encoder_weights_hash(encoder), prompt_tokens=P,
                   sides=sides, hidden=int(encoder.dim), tensors={"prompt": init_prompt(encoder, P, seed, depth=6)}, depth=6)


def test_deep_prompt_replaces_the_prompt_states_at_every_layer(encoder):
    """A deep prompt (VPT-Deep / P-tuning v2) sets the prompt positions' states entering each layer;
    changing one layer's vectors moves the vectors; other encoders on the same model are unaffected."""
    deep = _deep_adapter(encoder)
    assert deep.tensors["prompt"].shape == (6, 3, encoder.dim)
    texts = ["Coffee protects the liver.", "Salt raises blood pressure."]
    shallow = AdaptedEncoder(encoder, Adapter(kind="prompt", base_model=encoder.identity, base_hash=deep.base_hash,
                                              prompt_tokens=3, sides="query", hidden=int(encoder.dim),
                                              tensors={"prompt": deep.tensors["prompt"][0].clone()}))
    ad = AdaptedEncoder(encoder, deep)
    q_deep, q_shallow = ad.encode_queries(texts), shallow.encode_queries(texts)
    assert np.abs(q_deep - q_shallow).max() > 1e-4  # the deep rows act
    assert (q_deep * q_shallow).sum(1).min() > 0.95  # ... and start close to the shallow prompt (initialisation)
    moved = deep.tensors["prompt"].clone()
    moved[4] += 1.0  # only layer 4's prompt
    other = AdaptedEncoder(encoder, Adapter(kind="prompt", base_model=encoder.identity, base_hash=deep.base_hash,
                                            prompt_tokens=3, sides="query", hidden=int(encoder.dim),
                                            tensors={"prompt": moved}, depth=6))
    assert np.abs(other.encode_queries(texts) - q_deep).max() > 1e-4
    # the hooks act only inside a deep adapter's own pass: the plain encoder gives its own vectors
    np.testing.assert_allclose(AdaptedEncoder(encoder).encode(texts), encoder.encode(texts), atol=1e-5)
    np.testing.assert_allclose(ad.encode(texts), encoder.encode(texts), atol=1e-5)  # query side only
    # the text positions keep their offset and the prompt is not pooled
    hidden, mask, offset = ad.hidden_states(ad.content_ids(texts[:1]), "query")
    assert offset == 4 and mask[0, 1:4].sum() == 0


def test_deep_adapter_files_round_trip_and_bad_depth_is_refused(tmp_path, encoder):
    deep = _deep_adapter(encoder, P=4)
    w, j = deep.save(tmp_path / "deep")
    meta = json.loads(j.read_text())
    assert meta["depth"] == 6 and w.stat().st_size < 200_000
    back = load_adapter(tmp_path / "deep")
    assert back.depth == 6 and back.hash == deep.hash and torch.equal(back.tensors["prompt"], deep.tensors["prompt"])
    shallow = _prompt_adapter(encoder, P=4)
    assert "depth" not in shallow.header()  # shallow adapters keep their old header and hash
    meta["depth"] = 5  # the JSON says 5 layers, the tensor holds 6
    j.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match=r"shape \(6, 4, 384\), not \(5, P, 384\)"):
        load_adapter(tmp_path / "deep")
    with pytest.raises(InvalidInputError, match="exceeds the encoder's 6 layers"):
        init_prompt(encoder, 2, depth=7)
    too_deep = Adapter(kind="prompt", base_model=encoder.identity, base_hash=deep.base_hash, prompt_tokens=2, sides="query",
                       hidden=int(encoder.dim), tensors={"prompt": torch.zeros(8, 2, encoder.dim)}, depth=8)
    with pytest.raises(InvalidInputError, match="deep prompts for 8 layers; the encoder has 6"):
        AdaptedEncoder(encoder, too_deep)


# ---- files -----------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path, encoder):
    a = _prompt_adapter(encoder, P=6, sides="separate")
    a.training = {"seed": 3, "data_hash": "abc"}
    w, j = a.save(tmp_path / "sci")
    assert (w, j) == adapter_paths(tmp_path / "sci.safetensors")
    b = load_adapter(tmp_path / "sci")
    assert b.hash == a.hash and b.prompt_tokens == 6 and b.sides == "separate" and b.training["seed"] == 3
    assert torch.equal(b.tensors["view_prompt"], a.tensors["view_prompt"])
    meta = json.loads(j.read_text())
    assert {"base_model", "base_hash", "prompt_tokens", "sides", "hash", "training"} <= set(meta)
    assert w.stat().st_size < 200_000
    assert w.stat().st_mode & 0o777 == j.stat().st_mode & 0o777  # the weights are as readable as their JSON (not 0600)


def test_truncated_or_corrupt_adapter_is_one_line_error(tmp_path, encoder):
    w, j = _prompt_adapter(encoder).save(tmp_path / "a")
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match="corrupt or truncated") as e:
        load_adapter(tmp_path / "a")
    assert "\n" not in str(e.value)
    w.write_bytes(data)
    j.write_text(j.read_text()[:40])
    with pytest.raises(InvalidInputError, match="adapter JSON .* is corrupt"):
        load_adapter(tmp_path / "a")
    with pytest.raises(InvalidInputError, match="not found"):
        load_adapter(tmp_path / "missing")


def test_json_naming_another_p_than_the_tensor_is_refused(tmp_path, encoder):
    _, j = _prompt_adapter(encoder, P=4).save(tmp_path / "a")
    meta = json.loads(j.read_text())
    meta["prompt_tokens"] = 8
    j.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="names P=8 but tensor prompt .* holds 4 prompt vectors"):
        load_adapter(tmp_path / "a")


def test_tampered_tensor_fails_the_content_hash(tmp_path, encoder):
    from safetensors.torch import save_file

    a = _prompt_adapter(encoder, P=4)
    w, _ = a.save(tmp_path / "a")
    save_file({"prompt": a.tensors["prompt"] + 1}, str(w))
    with pytest.raises(InvalidInputError, match="does not match its JSON"):
        load_adapter(tmp_path / "a")


def test_adapter_for_another_base_model_is_refused(tmp_path, encoder, tiny_encoder_path):
    from heterag.encoding.text_encoder import TextEncoder

    tiny = TextEncoder(str(tiny_encoder_path))
    _prompt_adapter(tiny, P=4).save(tmp_path / "tiny")
    with pytest.raises(InvalidInputError, match=r"was built for base model local:st@sha256-[0-9a-f]{16} .* not sentence-transformers/all-MiniLM"):
        AdaptedEncoder(encoder, load_adapter(tmp_path / "tiny"))
    assert base_weights_hash(tiny._transformer) != encoder_weights_hash(encoder)


# ---- training --------------------------------------------------------------------------------
def _pairs(n: int = 12) -> PairSet:
    return PairSet([TrainPair(qid=f"q{i}", query=TOPICS[i][2], doc_id=f"d{i}", relevant=frozenset({f"d{i}"}))
                    for i in range(n)], "test")


def test_training_lowers_the_loss_is_seeded_and_leaves_the_encoder_frozen(encoder, docs):
    from heterag import chunk_document, make_view

    before = encoder_weights_hash(encoder)
    cds = [chunk_document(d, encoder.tokenize, 64) for d in docs]
    units = build_unit_index(cds, make_view("naive"), encoder)
    cfg = TuneConfig(prompt_tokens=4, epochs=3, batch_size=4, hard_negatives=2, val_fraction=0.0, lr=1e-2, min_pairs=4)
    r1 = train_adapter(_pairs(), units, encoder, cfg, progress=False)
    r2 = train_adapter(_pairs(), units, encoder, cfg, progress=False)
    assert r1.adapter.hash == r2.adapter.hash  # seeded
    assert r1.metrics["train_loss"][-1] < r1.metrics["train_loss"][0]
    from heterag.encoding.adapters import base_weights_hash as bwh

    assert bwh(encoder._transformer) == before  # frozen weights never change
    assert not any(p.requires_grad for p in encoder._transformer.parameters())
    assert r1.adapter.training["trained_queries"] and r1.adapter.training["data_hash"]


def test_deep_prompt_training_learns_every_layer_and_keeps_the_encoder_frozen(encoder, docs):
    from heterag import chunk_document, make_view

    before = encoder_weights_hash(encoder)
    cds = [chunk_document(d, encoder.tokenize, 64) for d in docs]
    units = build_unit_index(cds, make_view("late"), encoder)
    cfg = TuneConfig(prompt_tokens=2, deep=True, epochs=2, batch_size=4, hard_negatives=2, val_fraction=0.0, lr=1e-2,
                     min_pairs=4)
    res = train_adapter(_pairs(), units, encoder, cfg, progress=False)
    a = res.adapter
    assert a.depth == 6 and a.tensors["prompt"].shape == (6, 2, encoder.dim)
    start = init_prompt(encoder, 2, seed=0, depth=6)
    moved = (a.tensors["prompt"] - start).abs().amax(dim=(1, 2))
    assert bool((moved > 1e-4).all()), moved  # every layer's prompt was trained
    assert res.metrics["train_loss"][-1] < res.metrics["train_loss"][0]
    assert encoder_weights_hash(encoder) == before
    with pytest.raises(InvalidInputError, match="--deep is a prompt setting"):
        TuneConfig(full=True, deep=True)


def test_view_side_and_full_training_run(encoder, docs):
    from heterag import chunk_document, make_view

    cds = [chunk_document(d, encoder.tokenize, 64) for d in docs]
    for view in ("heterag", "late"):
        units = build_unit_index(cds, make_view(view), encoder)
        cfg = TuneConfig(prompt_tokens=2, sides="shared", epochs=1, batch_size=6, hard_negatives=1, val_fraction=0.0,
                         min_pairs=4)
        res = train_adapter(_pairs(), units, encoder, cfg, progress=False)
        assert res.adapter.applies_to_views and len(res.metrics["train_loss"]) == 1
    full = train_adapter(_pairs(), units, encoder, TuneConfig(full=True, epochs=1, batch_size=6, hard_negatives=1,
                                                              val_fraction=0.0, min_pairs=4), progress=False)
    assert full.adapter.kind == "full" and encoder_weights_hash(encoder) == full.adapter.base_hash
    q = AdaptedEncoder(encoder, full.adapter).encode_queries(["aspirin"])
    assert q.shape == (1, encoder.dim)


def test_empty_pairs_is_one_line_error(encoder, docs):
    from heterag import chunk_document, make_view

    units = build_unit_index([chunk_document(docs[0], encoder.tokenize)], make_view("naive"), encoder)
    with pytest.raises(InvalidInputError, match="no training pairs"):
        train_adapter(PairSet([], "beir"), units, encoder, TuneConfig(), progress=False)


def test_train_file_with_unknown_ids_is_reported_skipped_and_counted(tmp_path):
    root = _beir(tmp_path / "b", extra_qrels="q0\tnot-a-doc\t1\nghost\td1\t1\n")
    pairs, documents = beir_pairs(root, "train")
    assert pairs.skipped == 2 and len(pairs.pairs) == 10 and "skipped 2 judgements" in pairs.notes[0]
    assert len(documents) == len(TOPICS)


def test_pseudo_pairs_remove_the_query_sentence_from_the_positive(encoder, docs):
    from heterag import chunk_document, make_view

    cds = [chunk_document(d, encoder.tokenize, 64) for d in docs]
    view = make_view("heterag")
    units = build_unit_index(cds, view, encoder)
    n0 = units.n_index
    ps = pseudo_pairs(cds, view, encoder, units, n=8, seed=1, min_words=4)
    # one-sentence chunks cannot give up a sentence: skipped and counted
    assert 4 <= len(ps.pairs) <= 8 and ps.skipped and len(ps.pairs) + ps.skipped <= n0
    assert all(p.unit is not None and p.unit >= n0 for p in ps.pairs)
    for p in ps.pairs:
        view_text = encoder.tokenizer.decode(units.windows[p.unit])
        assert p.query.lower().rstrip(".") not in view_text.lower()
    assert units.vectors.shape[0] == n0 + len(ps.pairs) and units.n_index == n0  # positives are never negatives


# ---- collections -------------------------------------------------------------------------------
def test_collection_refuses_another_adapter_naming_both_and_the_reembed_command(tmp_path, encoder, docs):
    a = _prompt_adapter(encoder, sides="shared", seed=1)
    b = _prompt_adapter(encoder, sides="shared", seed=2)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    rag = open_collection("sci", adapter=tmp_path / "a", view="naive")
    rag.ingest(docs)
    rag.close()
    rag = open_collection("sci")  # its own adapter, recorded in the collection
    assert rag.fingerprint.adapter == a.hash and rag.retrieve(TOPICS[3][2], k=1)[0].doc_id == "d3"
    rag.close()
    for other, shown in ((tmp_path / "b", b.hash), ("none", "none")):
        with pytest.raises(FingerprintMismatchError) as e:
            open_collection("sci", adapter=other)
        msg = str(e.value)
        assert a.hash in msg and shown in msg and "heterag reembed --collection sci --adapter" in msg and "\n" not in msg
    (tmp_path / "a.safetensors").unlink()  # the collection keeps its own copy
    open_collection("sci").close()


def test_reembed_switches_adapters_and_a_crash_leaves_the_old_vectors_serving(tmp_path, encoder, docs):
    from heterag.collections.collection import collection_info
    from heterag.collections.reembed import reembed_collection

    a = _prompt_adapter(encoder, sides="view", seed=1)
    a.save(tmp_path / "a")
    rag = open_collection("r", view="late")
    rag.ingest(docs)
    before = {r.id: r.vector for r in rag.store.get(include_vectors=True)}
    rag.close()
    with pytest.raises(RuntimeError, match="simulated crash"):
        reembed_collection("r", tmp_path / "a", batch_documents=4, _fail_after=1)
    info = collection_info("r")
    assert info.adapter is None and info.store_dir == "store" and not list(info.path.glob("store-*"))
    rag = open_collection("r")
    assert rag.fingerprint.adapter == "none" and rag.retrieve(TOPICS[0][2], k=1)
    rag.close()
    report = reembed_collection("r", tmp_path / "a", batch_documents=4)
    assert report.chunks == len(before) and report.new_adapter == a.hash
    rag = open_collection("r")
    after = {r.id: r.vector for r in rag.store.get(include_vectors=True)}
    assert rag.fingerprint.adapter == a.hash and set(after) == set(before)
    assert not np.allclose(np.stack([after[k] for k in before]), np.stack(list(before.values())), atol=1e-4)
    rag.close()
    first = collection_info("r")
    assert (first.path / "store").is_dir()  # the replaced folder stays for readers opened before the switch
    reembed_collection("r", "none")
    rag = open_collection("r")
    again = {r.id: r.vector for r in rag.store.get(include_vectors=True)}
    np.testing.assert_allclose(np.stack([again[k] for k in before]), np.stack(list(before.values())), atol=1e-4)
    rag.close()
    now = collection_info("r")
    assert not (now.path / "store").exists()  # the next run removed the folder replaced two switches ago
    assert sorted(p.name for p in now.path.glob("store*")) == sorted({first.store_dir, now.store_dir})


def test_a_reader_opened_before_reembed_keeps_serving_after_the_switch(tmp_path, encoder, docs):
    """A reader (an app, a concurrent ask) that opened the collection before the switch must not find its
    store deleted under it: it goes on answering from the complete old vectors (bt #10 finding)."""
    from heterag.collections.reembed import reembed_collection

    a = _prompt_adapter(encoder, sides="view", seed=1)
    a.save(tmp_path / "a")
    rag = open_collection("rr")
    rag.ingest(docs)
    rag.close()
    reader = open_collection("rr")
    want = [h.doc_id for h in reader.retrieve(TOPICS[3][2], k=3)]
    reembed_collection("rr", tmp_path / "a", batch_documents=4)
    assert [h.doc_id for h in reader.retrieve(TOPICS[3][2], k=3)] == want  # not an empty store
    assert reader.store.count() == len({r.id for r in reader.store.get(include_vectors=False)}) > 0
    reader.close()
    fresh = open_collection("rr")
    assert fresh.fingerprint.adapter == a.hash and fresh.retrieve(TOPICS[3][2], k=1)
    fresh.close()


# ---- CLI -----------------------------------------------------------------------------------------
def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_tune_then_eval_leaves_out_trained_queries(tmp_path, capsys):
    root = _beir(tmp_path / "b", extra_qrels="ghost\td1\t1\n")
    out = tmp_path / "ad" / "sci"
    code, stdout, err = _run(capsys, "tune", str(root), "--out", str(out), "--prompt-tokens", "4", "--epochs", "2",
                             "--batch-size", "4", "--hard-negatives", "2", "--view", "naive")
    assert code == 0, err
    info = json.loads(stdout.strip().splitlines()[-1])
    assert info["skipped"] == 1 and "skipped 1 judgements" in err and info["bytes"] < 200_000
    code, stdout, err = _run(capsys, "eval", "beir", str(root), "--views", "naive", "--adapter", str(out), "--json")
    res = json.loads(stdout)
    assert code == 0 and res["adapter"] == info["hash"] and res["queries"] == 2 and res["excluded_trained_queries"] == 0
    code, _, err = _run(capsys, "eval", "beir", str(root), "--split", "train", "--views", "naive", "--adapter", str(out))
    assert code == 2 and "every evaluation query was used to train adapter" in err
    (tmp_path / "ids").write_text("q10\n")
    code, stdout, _ = _run(capsys, "eval", "beir", str(root), "--views", "naive", "--queries-from", str(tmp_path / "ids"), "--json")
    assert code == 0 and json.loads(stdout)["queries"] == 1


def test_cli_tune_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = _beir(tmp_path / "b")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n")
    code, _, err = _run(capsys, "tune", str(root), "--out", str(tmp_path / "x"))
    assert code == 2 and "no training pairs" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x*"))
    code, _, err = _run(capsys, "tune", str(root), "--out", str(tmp_path / "x"), "--split", "test")
    assert code == 2 and "refusing to train on the test split" in err


def test_cli_ingest_ask_and_reembed_with_adapter(tmp_path, capsys, encoder):
    notes = tmp_path / "notes"
    notes.mkdir()
    for i, (title, text, _) in enumerate(TOPICS[:6]):
        (notes / f"n{i}.md").write_text(f"# {title}\n\n{text}\n")
    _prompt_adapter(encoder, sides="query").save(tmp_path / "q")
    code, _, err = _run(capsys, "ingest", str(notes), "--collection", "c", "--adapter", str(tmp_path / "q"))
    assert code == 0, err
    code, out, _ = _run(capsys, "ask", TOPICS[4][2], "--collection", "c", "--json")
    assert code == 0 and json.loads(out)["retrieved"]
    code, _, err = _run(capsys, "ask", "x", "--collection", "c", "--adapter", "none")
    assert code == 2 and "heterag reembed --collection c" in err
    code, out, err = _run(capsys, "reembed", "--collection", "c", "--adapter", "none")
    assert code == 0 and "re-embedded" in out
    code, _, err = _run(capsys, "reembed", "--collection", "c", "--adapter", str(tmp_path / "nope"))
    assert code == 2 and "not found" in err
    code, out, _ = _run(capsys, "ask", TOPICS[4][2], "--collection", "c", "--json")
    assert code == 0


def test_cli_tune_collection_with_pseudo_queries(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(len(TOPICS)):  # two topics per note: chunks have sentences to spare
        (notes / f"n{i}.md").write_text(f"# {TOPICS[i][0]} in recent studies\n\n{TOPICS[i][1]} {TOPICS[(i + 1) % len(TOPICS)][1]}\n")
    code, _, err = _run(capsys, "ingest", str(notes), "--collection", "mine", "--view", "naive")
    assert code == 0, err
    out = tmp_path / "pseudo"
    code, stdout, err = _run(capsys, "tune", "--collection", "mine", "--out", str(out), "--prompt-tokens", "2", "--epochs", "1",
                             "--batch-size", "4", "--hard-negatives", "1", "--pseudo-pairs", "10")
    assert code == 0, err
    adapter = load_adapter(out)
    assert adapter.training["source"] == "pseudo" and adapter.training["collection"] == "mine"
    assert adapter.training["pseudo"]["kind"] == "title"  # the default: titles as queries
    code, _, err = _run(capsys, "tune", "--collection", "mine", "--out", str(out), "--pseudo-kind", "claims")
    assert code == 2 and "choose one of title, sentence, conclusion" in err
    code, _, err = _run(capsys, "tune", "--collection", "mine", "--out", str(out), "--pseudo-ranks", "5")
    assert code == 2 and "LO:HI" in err
    assert json.loads(stdout.strip().splitlines()[-1])["hash"] == adapter.hash
    code, _, err = _run(capsys, "tune", "--collection", "mine", "--out", str(out), "--pairs", "beir")
    assert code == 2 and "a collection has no labels" in err
    assert load_adapter(out).hash == adapter.hash  # the existing adapter is intact


def test_title_pseudo_pairs_query_is_the_title_and_the_positive_is_the_document_without_it(encoder, docs):
    from heterag import chunk_document, make_view

    cds = [chunk_document(d, encoder.tokenize, 64) for d in docs]
    for kind in ("late", "naive"):
        view = make_view(kind)
        units = build_unit_index(cds, view, encoder)
        n0 = units.n_index
        ps = pseudo_pairs(cds, view, encoder, units, n=5, seed=0, kind="title", min_words=2)
        assert len(ps.pairs) == 5 and ps.source == "pseudo"
        titles = {d.id: d.title for d in docs}
        for p in ps.pairs:
            assert p.query == titles[p.doc_id] and p.unit >= n0 and units.doc_ids[p.unit] == p.doc_id
            # the positive was encoded without the title: its tokens are not in the unit's window
            assert p.query.lower() not in encoder.tokenizer.decode(units.windows[p.unit]).lower()
        assert units.vectors.shape[0] == n0 + 5 and units.n_index == n0
        if kind == "late":  # the late positive differs from the stored (titled) vector of the same chunk
            p = ps.pairs[0]
            own = units.units_of(p.doc_id)
            assert min(np.linalg.norm(units.vectors[p.unit] - units.vectors[u]) for u in own) > 1e-4


def test_pseudo_rank_filter_keeps_only_pairs_inside_the_rank_window(encoder, docs):
    from heterag import chunk_document, make_view

    cds = [chunk_document(d, encoder.tokenize, 64) for d in docs]
    view = make_view("naive")
    every = pseudo_pairs(cds, view, encoder, build_unit_index(cds, view, encoder), n=50, kind="title", min_words=2)
    hard = pseudo_pairs(cds, view, encoder, build_unit_index(cds, view, encoder), n=50, kind="title", min_words=2,
                        keep_ranks=(2, 12))
    # titles of this corpus name their topic: the untrained encoder ranks (nearly) all of them first
    assert len(every.pairs) == len(docs)
    assert len(hard.pairs) < len(docs) and "dropped" in hard.notes[-1]
    easy = pseudo_pairs(cds, view, encoder, build_unit_index(cds, view, encoder), n=50, kind="title", min_words=2,
                        keep_ranks=(1, 1))
    assert len(easy.pairs) + len(hard.pairs) == len(docs)
    with pytest.raises(InvalidInputError, match="choose one of title, sentence, conclusion"):
        pseudo_pairs(cds, view, encoder, build_unit_index(cds, view, encoder), kind="claims")
    with pytest.raises(InvalidInputError, match="keep_ranks"):
        pseudo_pairs(cds, view, encoder, build_unit_index(cds, view, encoder), keep_ranks=(3, 2))
