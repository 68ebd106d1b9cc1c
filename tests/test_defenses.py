"""Defenses against M3Att poisoning: calibration on clean data, detection of centroid-optimised
images, purification, and the plug objects working through the pipeline.

One small knowledge base of 50 synthetic scenes (64 px) is built per module; the poison is a
held-out scene moved by 40 steps of L-inf PGD (eps 16/255) towards the knowledge base's mean
image embedding, as M3Att moves its poisons towards cluster centres.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corpora.synthetic_scenes import generate_scenes
from heterag import Document, Hit, ImageRef, RetrievalQuery, UnknownNameError, open_collection
from heterag.core.errors import InvalidInputError
from heterag.encoding.image_encoders import image_pixels
from sandbox.attacks import pgd
from sandbox.defenses import (
    DEFENSES,
    DefenseContext,
    Probe,
    fit_threshold,
    kb_images,
    make_defense,
    probes_from_kb,
    purify_image,
)

FRR = 0.1
N_KB = 50


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """The clean knowledge base (read-only for the tests), its probes and contexts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HETERAG_HOME", str(tmp_path_factory.mktemp("defenses-home")))
        rag = open_collection("kb")
        docs = [s.to_document() for s in generate_scenes(N_KB, seed=1, size=64)]
        rag.ingest(docs)
    probes = probes_from_kb(rag)
    yield {"rag": rag, "docs": docs, "probes": probes, "ctx": DefenseContext(rag, probes, false_rejection=FRR),
           "image_ctx": DefenseContext(rag, probes_from_kb(rag, text=False), false_rejection=FRR)}
    rag.close()


@pytest.fixture(scope="module")
def held_out():
    return list(generate_scenes(8, seed=77, size=64))


@pytest.fixture(scope="module")
def poison(kb, held_out):
    """(poison ImageRef, its seed ImageRef, the target: the knowledge base's mean image direction)."""
    rag = kb["rag"]
    target = kb_images(rag).vectors.mean(axis=0)
    target /= np.linalg.norm(target)
    seed = held_out[0].to_document().image
    res = pgd(rag.image_encoder, image_pixels(seed)[None], target[None], eps=16 / 255, alpha=2 / 255, steps=40,
              progress=False, threads=1)
    assert res.similarity_quantised[0] > 0.6  # the attack itself worked
    return ImageRef.from_array(res.images_uint8[0], source="poison.png"), seed, target


@pytest.fixture(scope="module")
def fitted(kb):
    out = {}
    for name in ("consistency", "knn_density", "hubness"):
        d = make_defense(name)
        out[name] = (d, d.fit(kb["ctx"]))
    return out


def item_of(rag, doc):
    """The IngestItem a guard would see for ``doc`` (captured through a real ingest into a scratch collection)."""
    seen = []

    class Spy:
        name = "spy"

        def check(self, item, pipeline):
            seen.append(item)
            from heterag import Verdict

            return Verdict.reject("spy only")

    scratch = open_collection("scratch")
    scratch.guards.append(Spy())
    scratch.ingest([doc])
    scratch.close()
    return seen[0]


# --------------------------------------------------------------------------- calibration


def test_thresholds_reject_the_target_share_of_clean_knowledge(kb, fitted):
    ctx = kb["ctx"]
    for name in ("consistency", "knn_density"):
        d, rep = fitted[name]
        assert rep.n == N_KB and rep.clean_rejection == pytest.approx(FRR, abs=1e-9), name
        assert d.clean_rejection(ctx) == pytest.approx(rep.clean_rejection), name
    assert fitted["consistency"][1].direction == "reject_below" and fitted["knn_density"][1].direction == "reject_above"
    hub, rep = fitted["hubness"]
    assert rep.direction == "reject_above" and rep.n == N_KB
    assert 0.0 < rep.clean_rejection <= FRR + 1e-9  # integer counts: ties at the cut only lower it
    assert hub.clean_rejection(ctx) == pytest.approx(rep.clean_rejection)
    # a stricter target moves the threshold: 2 of 50
    strict = make_defense("knn_density").fit(DefenseContext(kb["rag"], kb["probes"], false_rejection=0.04))
    assert strict.clean_rejection == pytest.approx(0.04) and strict.threshold > fitted["knn_density"][1].threshold


def test_fit_threshold_rounds_to_the_nearest_count_and_is_strict():
    s = np.arange(10.0)
    assert fit_threshold(s, 0.2, "reject_above") == (7.5, 0.2)
    assert fit_threshold(s, 0.2, "reject_below") == (1.5, 0.2)
    assert fit_threshold(s, 0.0, "reject_above") == (9.0, 0.0)
    with pytest.raises(InvalidInputError, match="at least 2"):
        fit_threshold([1.0], 0.1, "reject_above")


# --------------------------------------------------------------------------- detection


def test_consistency_rejects_unrelated_text_more_than_matching_text(kb, fitted, held_out):
    guard = fitted["consistency"][0]
    rag = kb["rag"]
    matching, unrelated = [], []
    for i, s in enumerate(held_out[1:6]):
        doc = s.to_document()
        other = held_out[(i + 3) % len(held_out)].to_document()  # another scene's caption
        matching.append(guard.score(item_of(rag, doc), rag))
        unrelated.append(guard.score(item_of(rag, Document.create(other.text, image=doc.image, id=f"u{i}")), rag))
    assert min(m - u for m, u in zip(matching, unrelated, strict=True)) > 0.05
    assert sum(u < guard.threshold for u in unrelated) >= 4
    assert sum(m < guard.threshold for m in matching) <= 1
    assert guard.score(item_of(rag, Document.create(None, image=held_out[1].to_document().image, id="img")), rag) is None


def test_density_and_hubness_reject_the_centroid_poison_not_its_seed_or_typical_items(kb, fitted, poison, held_out):
    rag = kb["rag"]
    adv, seed, _ = poison
    adv_item = item_of(rag, Document.create("A covertly wrong caption.", image=adv, id="p"))
    seed_item = item_of(rag, Document.create("A covertly wrong caption.", image=seed, id="p"))
    clean = [item_of(rag, s.to_document()) for s in held_out[1:6]]
    for name in ("knn_density", "hubness"):
        d, rep = fitted[name]
        assert not d.check(adv_item, rag).accept, name
        assert d.check(seed_item, rag).accept, name  # the optimisation is what gets it rejected
        assert d.score(adv_item) > rep.threshold >= d.score(seed_item), name
        assert sum(not d.check(c, rag).accept for c in clean) <= 1, name
    assert "kNN density" in fitted["knn_density"][0].check(adv_item, rag).reason
    low = make_defense("knn_density", direction="below")
    assert low.fit(kb["ctx"]).direction == "reject_below"
    assert low.check(adv_item, rag).accept  # the low-density variant looks for outliers, not centres


def test_purification_removes_the_perturbation_much_more_than_clean_content(kb, poison, held_out):
    enc = kb["rag"].image_encoder
    adv, seed, target = poison
    clean = [s.to_document().image for s in held_out[1:6]]
    before = enc.encode_images([adv, *clean])
    after = enc.encode_images([purify_image(r) for r in [adv, *clean]])
    to_target_drop = before @ target - after @ target
    self_sim = np.sum(before * after, axis=1)
    assert to_target_drop[0] > 0.3 and to_target_drop[0] > 2 * to_target_drop[1:].mean()
    assert self_sim[1:].mean() > 0.6 and self_sim[0] < self_sim[1:].mean() - 0.3, self_sim
    assert np.allclose(np.asarray(purify_image(seed, sigma=0)).shape, (64, 64, 3))


# --------------------------------------------------------------------------- through the pipeline


def test_guards_work_through_ingest_and_report_rejections(kb, fitted, poison, held_out):
    adv, _, target = poison
    live = open_collection("live")
    live.ingest(kb["docs"])
    clean = [s.to_document() for s in held_out[1:4]]
    unrelated = Document.create("The French Revolution began in 1789 with the storming of the Bastille.",
                                image=held_out[4].to_document().image, id="unrelated")
    items = [Document.create("A covertly wrong caption about a blue square.", image=adv, id="poison"), unrelated, *clean]
    guards = [fitted[n][0].plug() for n in ("consistency", "knn_density", "hubness")]
    with live.defended(guards=guards):
        report = live.ingest(items)
    assert live.guards == []
    reasons = {e.source: e.message for e in report.rejected}
    assert "poison.png" in reasons and ("knn_density" in reasons["poison.png"] or "consistency" in reasons["poison.png"])
    assert any("rejected by guard consistency" in m for m in reasons.values())  # the unrelated caption
    assert report.documents_written >= 2
    stored = {r.metadata["doc_id"] for r in live.image_store.get()}
    assert "poison" not in stored and "unrelated" not in stored
    # purify_ingest replaces the image; the stored embedding lost the attack
    purifier = make_defense("purify_ingest")
    assert purifier.stage == "ingest" and purifier.fit(kb["ctx"]).direction == "none"
    with live.defended(guards=[purifier.plug()]):
        report = live.ingest([Document.create("poison, purified", image=adv, id="poison2")])
    assert report.images_replaced == 1 and report.documents_written == 1
    vec = next(r.vector for r in live.image_store.get(include_vectors=True) if r.metadata["doc_id"] == "poison2")
    poison_vec = live.image_encoder.encode_images([adv])[0]
    assert float(np.dot(vec, target)) < float(np.dot(poison_vec, target)) - 0.3
    live.close()


def test_purify_filter_demotes_the_poison_and_notes_every_rescored_hit(kb, poison, held_out):
    adv, _, _ = poison
    live = open_collection("live")
    live.ingest([*kb["docs"], Document.create("A covertly wrong caption.", image=adv, id="poison")])
    f = make_defense("purify")
    assert f.stage == "retrieval" and f.fit(kb["ctx"]).clean_rejection == 0.0 and f.clean_rejection(kb["ctx"]) == 0.0
    # queries whose top-5 the poison entered
    queries = [s.to_document().image for s in generate_scenes(30, seed=5, size=64)]
    hit_queries = [q for q in queries if "poison" in [h.doc_id for h in live.retrieve(image=q, k=5)]]
    assert hit_queries, "the poison should be retrieved for some unseen queries"
    enc = live.image_encoder
    rank_before = rank_after = 0
    drops = []  # (poison's image-similarity loss, mean loss of the clean candidates) per query
    for q in hit_queries:
        plain = live.retrieve(image=q, k=10)
        out = f.plug().filter(RetrievalQuery(None, q, 5, {"image": enc.encode_images([q])[0]}), plain, live)
        assert sorted(h.chunk_id for h in out) == sorted(h.chunk_id for h in plain) and not any(h.dropped for h in out)
        assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
        assert all(h.notes and h.notes[0].startswith("purify: image") for h in out)
        before = {h.doc_id: h.scores["image"] for h in plain}
        drop = {h.doc_id: before[h.doc_id] - h.scores["image"] for h in out}
        clean_drop = np.mean([v for d, v in drop.items() if d != "poison"])
        drops.append((drop["poison"], clean_drop))
        rank_before += [h.doc_id for h in plain].index("poison")
        rank_after += [h.doc_id for h in out].index("poison")
    poison_drop, clean_drop = np.mean(drops, axis=0)
    assert poison_drop > clean_drop + 0.08, drops  # blur costs clean candidates too, the poison more
    assert rank_after > rank_before  # demoted on the whole
    with live.defended(hit_filters=[f.plug()]):  # through the pipeline: re-scored and noted, nothing dropped
        res = live.search(image=hit_queries[0], k=5)
    assert len(res.hits) == 5 and not res.dropped and all(h.notes for h in res.hits)
    live.close()


def test_score_threshold_calibrates_on_probes_and_drops_only_above_its_threshold(kb):
    ctx = kb["image_ctx"]
    f = make_defense("score_threshold")
    rep = f.fit(ctx)
    assert rep.direction == "reject_above" and rep.n == ctx.k * len(ctx.probes)
    assert rep.clean_rejection == pytest.approx(FRR, abs=0.02)
    thr = rep.threshold

    def hit(i, image):
        return Hit(chunk_id=f"c{i}", doc_id=f"d{i}", text="", view="", score=image, scores={"image": image})

    hits = [hit(0, 0.999), hit(1, thr + 0.05), hit(2, thr - 0.05), Hit("c3", "d3", "t", "", 0.9, scores={"text": 0.9})]
    out = f.plug().filter(RetrievalQuery(None, None, 2), hits, kb["rag"])
    assert [bool(h.dropped) for h in out] == [False, True, False, False]  # copies of the query and text-only hits pass
    assert "above" in out[1].dropped
    probe = ctx.probes[0]
    with kb["rag"].defended(hit_filters=[f.plug()]):
        res = kb["rag"].search(image=probe.image, k=5)
    assert len(res.hits) == 5 and res.hits[0].doc_id == probe.doc_id  # the exact copy is kept
    assert all(h.scores["image"] <= thr or h.scores["image"] >= 0.98 for h in res.hits)
    assert all(d.filter == "score_threshold" and d.hit.scores["image"] > thr for d in res.dropped)
    floor = make_defense("score_threshold", statistic="zscore", min_score=0.99)
    floor.fit(ctx)
    assert floor.clean_rejection(ctx) > 0.5  # a floor no clean hit reaches drops (nearly) all


# --------------------------------------------------------------------------- registry and errors


def test_registry_names_choices_and_rejects_bad_parameters(kb):
    assert set(DEFENSES) == {"consistency", "knn_density", "hubness", "score_threshold", "purify", "purify_ingest"}
    with pytest.raises(UnknownNameError, match="choose one of: consistency, hubness, knn_density"):
        make_defense("firewall")
    for name, params, word in [("knn_density", {"n_neighbours": 0}, "n_neighbours"),
                               ("knn_density", {"direction": "sideways"}, "direction"),
                               ("hubness", {"signal": "audio"}, "signal"),
                               ("purify", {"quality": 200}, "quality"),
                               ("purify", {"sigma": -1}, "sigma"),
                               ("score_threshold", {"statistic": "vibes"}, "statistic"),
                               ("consistency", {"bogus": 1}, "bogus")]:
        with pytest.raises(InvalidInputError, match=word):
            make_defense(name, **params)
    with pytest.raises(InvalidInputError, match="not fitted"):
        make_defense("hubness").plug()
    with pytest.raises(InvalidInputError, match="false_rejection"):
        DefenseContext(kb["rag"], kb["probes"], false_rejection=0.9)
    with pytest.raises(InvalidInputError, match="probe"):
        Probe(None, None)
    with pytest.raises(InvalidInputError, match="n_neighbours=60"):
        make_defense("knn_density", n_neighbours=60).fit(kb["ctx"])
    for name in DEFENSES:
        d = make_defense(name)
        assert d.name == name and d.stage in ("ingest", "retrieval")
