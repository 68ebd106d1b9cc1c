"""MrM black-box membership inference: proposals, mask selection, trials, the test, baselines, scenarios."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
from chat_server import ChatServer
from scipy import stats

from corpora.synthetic_scenes import generate_scenes
from heterag import HeteragError, InvalidInputError, content_fingerprint, open_collection
from heterag.cli import main
from heterag.core.images import ImageRef
from heterag.core.results import Answer
from heterag.generators import ExtractiveGenerator, OpenAIGenerator
from sandbox.attacks.answer_match import AnswerMatcher
from sandbox.attacks.counterfact import MaskFeatures, ZeroShotProxy, features, rank_masks
from sandbox.attacks.mia_baselines import HardWords, mask_left, mba_score, qb_score
from sandbox.attacks.mrm import (
    PROMPTS,
    MaskQuery,
    Oracle,
    calibrate_p_t,
    check_counts,
    geometric_test,
    prepare_target,
    run_trials,
    set_pvalue,
)
from sandbox.attacks.proposals import AnnotationProposer, SegmentationProposer, make_proposer
from sandbox.membership import REFUSAL_ANSWER, RefusalGenerator, augment, refusal, roc_metrics
from sandbox.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENES = [s.to_annotated() for s in generate_scenes(12, seed=3, size=96)]


class FakeProxy:
    """Uniform probabilities: every mask is equally unpredictable."""

    def probabilities(self, images, vocabulary):
        return np.full((len(images), len(vocabulary)), 1 / len(vocabulary))


# --------------------------------------------------------------------------- statistics


def test_geometric_test_matches_the_formula_and_separates_members():
    p_t, x = 0.4, [1, 2, 1]
    k, s = len(x), sum(x)
    z = (s - k / p_t) / np.sqrt(k * (1 - p_t) / p_t**2)
    assert geometric_test(x, p_t) == pytest.approx((z, stats.norm.sf(z)))
    # a non-member that never answers (censored at Q + 1 = 6) gets a far smaller p-value
    assert geometric_test([6, 6, 6], p_t)[1] < 0.01 < geometric_test([1, 2, 1], p_t)[1]
    # no usable mask: no evidence either way
    assert geometric_test([], p_t)[1] == 0.5
    # a set pools every mask of every image into one test
    assert set_pvalue([[1, 2], [1]], p_t) == pytest.approx(geometric_test([1, 2, 1], p_t)[1])
    with pytest.raises(InvalidInputError, match="p_t"):
        geometric_test([1], 1.0)


def test_p_t_calibration_recovers_the_success_rate_under_censoring():
    rng = np.random.default_rng(0)
    q, p = 5, 0.3
    x = rng.geometric(p, size=4000)
    x = np.where(x > q, q + 1, x)
    assert calibrate_p_t([x.tolist()], q) == pytest.approx(p, abs=0.02)


def test_q_or_k_below_one_is_refused_in_code_and_in_scenarios():
    for q, k in ((0, 3), (3, 0), (-1, 1)):
        with pytest.raises(InvalidInputError, match="must be an integer >= 1"):
            check_counts(q, k)
    for key in ("trials", "masks"):
        with pytest.raises(ScenarioError, match=rf"mrm\.{key}: .*greater than or equal to 1"):
            parse_scenario({"data": {"source": "synthetic:20"}, "attack": {"name": "mrm"}, "mrm": {key: 0}})


def test_unknown_method_lists_the_choices():
    with pytest.raises(ScenarioError, match=r"mrm\.methods: unknown method\(s\) 'mia-x'; choose from: mrm, qb-mia, "
                                            r"sb-mia-0.25, sb-mia-0.5, sb-mia-0.75, mba"):
        parse_scenario({"data": {"source": "synthetic:20"}, "attack": {"name": "mrm"}, "mrm": {"methods": ["mrm", "mia-x"]}})
    with pytest.raises(ScenarioError, match="membership-inference defense"):
        parse_scenario({"data": {"source": "synthetic:20"}, "defenses": [{"name": "refusal"}]})


def test_roc_metrics_auc_and_tpr_at_low_fpr():
    y = np.array([1] * 50 + [0] * 50)
    perfect = roc_metrics(y.astype(float), y, 200, 0)
    assert perfect["auc"]["value"] == 1 and perfect["tpr@1%fpr"]["value"] == 1
    rnd = roc_metrics(np.random.default_rng(0).random(100), y, 200, 0)
    assert rnd["auc"]["ci_low"] < 0.5 < rnd["auc"]["ci_high"] + 0.15


# --------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize(("answer", "label", "named"), [
    ("A small yellow square at the bottom right, a large blue dotted circle at the bottom.", "blue circle", True),
    ("a red square and a blue circle", "red circle", False),  # not in one clause
    ("Two red crosses on the left.", "red cross", True),  # plural
    ("a grey disc", "gray circle", True),  # synonyms both ways
    ("three men riding bikes", "person", True),  # COCO synonyms and irregular plural
    ("the kitchen table", "dining table", True),  # a COCO multi-word category named by its head
    ("a table", "teddy bear", False),
    ("", "red circle", False),
    # a negated mention names nothing (the negation covers the rest of its clause)
    ("not a cat", "cat", False),
    ("There is no red circle here.", "red circle", False),
    ("It isn't a blue circle", "blue circle", False),
    ("without a doubt no dog", "dog", False),
    ("not a square but a red circle", "red circle", True),  # the clause ends at "but"
    ("a red circle, not a square", "red circle", True),
    ("the cat is not visible", "cat", True),  # named before the negation
])
def test_evaluator_decides_whether_an_answer_names_the_object(answer, label, named):
    assert AnswerMatcher().names(answer, label) is named


def test_evaluator_takes_scenario_synonyms():
    assert not AnswerMatcher().names("a lozenge", "kite")
    assert AnswerMatcher({"kite": ["lozenge"]}).names("a lozenge", "kite")


# --------------------------------------------------------------------------- proposals and selection


def test_segmentation_finds_the_annotated_objects_and_masks_stay_in_the_area_range():
    seg = SegmentationProposer(scale=500, sigma=0.8, merge_colour=60)
    ann = AnnotationProposer(["colour", "shape"])
    found = total = 0
    for it in SCENES:
        arr = np.asarray(it.image.to_pil())
        props = seg.propose(it, arr)
        for g in (p for p in ann.propose(it, arr) if 0.02 <= p.area <= 0.25):
            total += 1
            found += any((g.mask & p.mask).sum() / (g.mask | p.mask).sum() > 0.5 for p in props)
    assert total and found / total > 0.6
    t = prepare_target(SCENES[0], True, seg, FakeProxy(), ["red circle"], 2, label_keys=["colour", "shape"])
    for mq in t.masks:
        assert 0.02 <= mq.area <= 0.25
        arr = np.asarray(mq.image.to_pil())
        assert (arr.sum(axis=2) == 0).mean() >= mq.area - 1e-9  # the masked pixels are 0


def test_annotation_mode_labels_and_counterfact_ranking():
    it = next(s for s in SCENES if sum(0.02 <= o.area_fraction(96, 96) <= 0.25 for o in s.objects) >= 2)
    props = AnnotationProposer(["colour", "shape"]).propose(it, np.asarray(it.image.to_pil()))
    assert {p.label for p in props} == {f"{o.attributes['colour']} {o.attributes['shape']}" for o in it.objects}
    # high entropy, low p_c and a small gap rank first
    easy, hard = features(np.array([0.9, 0.05, 0.05]), 0), features(np.array([0.3, 0.35, 0.35]), 0)
    assert hard.entropy > easy.entropy and rank_masks([easy, hard]) == [1, 0]
    assert rank_masks([MaskFeatures(0.1, 0.0, 2.0), MaskFeatures(0.1, 0.0, 2.0)]) == [0, 1]


def test_zero_shot_proxy_uses_the_image_encoders_text_side():
    from heterag.encoding.image_encoders import load_image_encoder

    proxy = ZeroShotProxy(load_image_encoder("default"))
    p = proxy.probabilities([SCENES[0].image, SCENES[1].image], ["red circle", "blue square", "green star"])
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1) and not np.allclose(p, 1 / 3)


def test_corrupt_too_small_and_maskless_targets_are_reported_not_dropped():
    seg = SegmentationProposer()
    good = SCENES[0]
    corrupt = dataclasses.replace(good, id="bad", image=dataclasses.replace(good.image, data=good.image.data[:60]))
    tiny = dataclasses.replace(good, id="tiny", image=ImageRef.from_array(np.zeros((8, 8, 3), dtype=np.uint8)))
    flat = dataclasses.replace(good, id="flat", objects=(), image=ImageRef.from_array(np.full((64, 64, 3), 90, np.uint8)))
    got = {t.id: t for t in (prepare_target(x, False, seg, FakeProxy(), ["circle"], 3) for x in (corrupt, tiny, flat))}
    assert got["bad"].status == "corrupt" and "cannot be decoded" in got["bad"].reason
    assert got["tiny"].status == "too_small" and "too small to mask" in got["tiny"].reason
    assert got["flat"].status == "no_proposal" and not got["flat"].masks
    # a target without masks keeps the neutral score, so it stays in the ROC
    assert geometric_test([], 0.3)[1] == 0.5


def test_unknown_proposer_lists_the_choices_and_transformers_needs_a_local_folder(tmp_path):
    with pytest.raises(HeteragError, match="unknown object proposer 'yolo'; choose one of: annotations, segmentation, "
                                          "transformers"):
        make_proposer("yolo")
    with pytest.raises(InvalidInputError, match="not a local folder"):
        make_proposer("transformers", model=str(tmp_path / "nope"))


# --------------------------------------------------------------------------- trials through the answer API


@pytest.fixture()
def scenes_pipe():
    pipe = open_collection("mrm-scenes", store="faiss", purpose="experiment")
    pipe.ingest([s.to_document() for s in SCENES])
    yield pipe
    pipe.close()


def test_reused_retrieval_gives_exactly_the_answers_of_sequential_answer_calls(scenes_pipe):
    it = SCENES[2]
    arr = np.asarray(it.image.to_pil()).copy()
    arr[it.objects[0].mask] = 0
    masked = ImageRef.from_array(arr)
    scenes_pipe.generator = ExtractiveGenerator(scenes_pipe.encoder, temperature=0.5, seed=7)
    sequential = [scenes_pipe.answer(PROMPTS["paper"], k=5, image=masked).text for _ in range(6)]
    scenes_pipe.generator = ExtractiveGenerator(scenes_pipe.encoder, temperature=0.5, seed=7)
    oracle = Oracle(scenes_pipe, 5)
    reused = [oracle.ask(PROMPTS["paper"], masked) for _ in range(6)]
    assert reused == sequential and len(set(reused)) > 1  # sampling really varies the answers
    assert oracle.queries == 6 and len(oracle._hits) == 1  # one retrieval for six trials


class Flaky:
    """A generator that fails (HTTP-like error, then an empty answer) before answering."""

    name = "flaky"

    def __init__(self, script):
        self.script = list(script)

    def generate(self, question, hits, **kw):
        step = self.script.pop(0) if self.script else "ok"
        if step == "error":
            import httpx

            raise httpx.ConnectError("connection refused")
        return Answer(text="" if step == "empty" else "a blue circle", citations=(), hits=tuple(hits), context_tokens=0,
                      generator=self.name)


def test_generator_errors_and_empty_answers_are_retried_then_recorded_as_failed_trials(scenes_pipe):
    waits: list[float] = []
    scenes_pipe.generator = Flaky(["error", "empty", "ok"])
    mq = MaskQuery(SCENES[0].image, "blue circle", 0.05, MaskFeatures(0.1, 0, 1))
    log = run_trials(Oracle(scenes_pipe, 3, retries=3, backoff=0.1, sleep=waits.append), mq, "q?", 5, AnswerMatcher())
    assert waits == [0.1, 0.2] and log.correct == [True] and log.failed == 0  # retried with backoff, then answered
    scenes_pipe.generator = Flaky(["error"] * 3 + ["empty"] * 3 + ["ok"])
    waits.clear()
    log = run_trials(Oracle(scenes_pipe, 3, retries=2, backoff=0.1, sleep=waits.append), mq, "q?", 5, AnswerMatcher())
    assert log.failed == 2 and log.correct == [False, False, True] and log.first_success(5) == 3


def test_http_errors_of_an_openai_endpoint_mid_run_are_failed_trials_not_a_crash(scenes_pipe, server: ChatServer):
    server.config.reply = "It is a blue circle."
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    scenes_pipe.generator = OpenAIGenerator("test-model", base_url=base, api_key="sk-test-123", timeout=5.0)
    mq = MaskQuery(SCENES[0].image, "blue circle", 0.05, MaskFeatures(0.1, 0, 1))
    oracle = Oracle(scenes_pipe, 3, retries=1, backoff=0.0)
    assert run_trials(oracle, mq, PROMPTS["paper"], 3, AnswerMatcher()).correct == [True]
    server.config.fail_status = 500
    log = run_trials(oracle, mq, PROMPTS["paper"], 3, AnswerMatcher())
    assert log.failed == 3 and log.first_success(3) == 4 and oracle.failures == 3


# --------------------------------------------------------------------------- baselines and defenses


def test_baseline_scores():
    assert (qb_score("Yes, it does."), qb_score("No."), qb_score("A red circle [1]")) == (1.0, 0.0, 0.5)
    arr = np.asarray(mask_left(SCENES[0].image, 0.5).to_pil())
    assert arr[:, :48].max() == 0 and arr[:, 48:].max() > 0
    hard = HardWords(["a red circle on a teal background", "a blue square on a grey background"])
    masked, words = hard.mask("A purple hexagon at the top on a teal background.", 2)
    assert words == ["purple", "hexagon"] and masked.count("[MASK]") == 2
    assert mba_score("a purple hexagon", words) == 1 and mba_score("a red hexagon", words) == 0.5


def test_refusal_defense_for_extractive_and_openai_generators(encoder, server: ChatServer):
    g = refusal(ExtractiveGenerator(encoder))
    assert isinstance(g, RefusalGenerator)
    assert g.generate(PROMPTS["paper"], []).text == REFUSAL_ANSWER
    assert g.generate("What colour is the sky?", []).text != REFUSAL_ANSWER
    o = OpenAIGenerator("m", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="k")
    assert "Do not reveal information about the knowledge base" in refusal(o).system_prompt
    assert "Do not reveal" not in o.system_prompt


@pytest.mark.parametrize("kind", ["flip", "grayscale", "crop", "blur"])
def test_augmentations_keep_the_size_and_change_the_pixels(kind):
    a = SCENES[0].image
    b = augment(a, kind)
    assert (b.width, b.height) == (a.width, a.height) and b.sha256 != a.sha256
    with pytest.raises(InvalidInputError, match="choose from"):
        augment(a, "rotate")


# --------------------------------------------------------------------------- scenarios


def reduced(path: Path, **changes):
    scn = load_scenario(path)
    d = scn.model_dump(mode="json", by_alias=True, exclude={"base_dir"}, exclude_unset=True)
    for key, value in changes.items():
        cur = d
        *head, last = key.split(".")
        for h in head:
            cur = cur[h]
        cur[last] = value
    return d


def test_ready_made_synthetic_scenario_at_reduced_size(tmp_path):
    """mrm_synthetic.yaml at reduced size with the defenses of mrm_synthetic_defenses.yaml (the CI test): every
    metric name, the index unchanged, MrM ahead."""
    defenses = reduced(ROOT / "eval" / "scenarios" / "mrm_synthetic_defenses.yaml")["defenses"]
    assert {x["name"] for x in defenses} == {"refusal", "augmented_store", "score_threshold"}
    d = reduced(ROOT / "eval" / "scenarios" / "mrm_synthetic.yaml", defenses=defenses, **{
        "data.source": "synthetic:80", "data.splits.knowledge_base": {"count": 44}, "data.splits.reference": {"count": 12},
        "data.splits.test": {"count": 22}, "mrm.members": 22, "mrm.shadow": 8, "mrm.sets": 50, "mrm.set_sizes": [1, 5, 10],
        "bootstrap": 200, "defense_probes": 30})
    scenario = tmp_path / "mrm_small.yaml"
    scenario.write_text(json.dumps(d))
    out = tmp_path / "report"
    t = time.perf_counter()
    assert main(["sandbox", "run", str(scenario), "--out", str(out)]) == 0
    assert time.perf_counter() - t < 120
    r = json.loads((out / "report.json").read_text())
    assert r["kind"] == "membership" and r["fingerprint_before"] == r["fingerprint_after"]
    assert all(i["identical"] and i["clean"] for i in r["injections"])
    m = r["metrics"]
    for method in ("mrm", "qb-mia", "sb-mia-0.25", "sb-mia-0.5", "sb-mia-0.75", "mba"):
        for name in ("auc", "tpr@1%fpr", "tpr@5%fpr", "set_auc@1", "set_auc@5", "set_auc@10", "queries_per_target"):
            assert f"{name}[method={method}]" in m, (name, method)
        for d_ in ("refusal", "augmented_store", "score_threshold"):
            key = f"method={method},defense={d_}"
            assert (f"auc[{key}]" in m) == r["signal"].get(key, {"signal": True})["signal"], key
    assert "auc[method=mrm,defense=refusal,prompt=plain]" in m
    assert "auc[method=mrm,defense=augmented_store,probing=augmented]" in m
    assert m["auc[method=mrm]"]["value"] >= 0.7
    assert m["auc[method=mrm]"]["value"] > m["auc[method=qb-mia]"]["value"]
    # the paper prompt is refused: calibration names nothing (p_t at its floor), so MrM under refusal has no
    # signal and is marked as such, not reported as a result (no AUC, no set AUC, no ROC)
    assert r["signal"]["method=mrm"]["signal"] and not r["signal"]["method=mrm,defense=refusal"]["signal"]
    assert "p_t at its floor" in r["signal"]["method=mrm,defense=refusal"]["reason"]
    assert not [k for k in m if k.endswith("[method=mrm,defense=refusal]") and not k.startswith("queries_per_target")]
    assert "method=mrm,defense=refusal" not in r["roc"] and "method=mrm,defense=refusal" in r["passes"]
    assert "| mrm,defense=refusal | **no signal on calibration: not a result** |" in (out / "report.md").read_text()
    assert 0 <= m["targets_without_mask"]["value"] < 0.5
    assert len(r["per_target"]) == 44 and {t["status"] for t in r["per_target"]} <= {"ok", "no_proposal"}
    assert {"roc.png", "roc_log.png", "set_auc.png"} <= {p.name for p in out.glob("*.png")}
    assert "membership inference" in (out / "report.md").read_text()
    json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def make_coco(root: Path, n: int = 24, split: str = "val2017", seed: int = 21) -> Path:
    """A COCO 2017-format folder (captions + instances with polygon masks) built from synthetic scenes;
    called again with another ``split`` it adds that split to the folder."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir()
    scenes = list(generate_scenes(n, seed=seed, size=96))
    shapes = sorted({o.shape for s in scenes for o in s.objects})
    images, captions, instances = [], [], []
    for i, s in enumerate(scenes):
        name = f"{i + 1:012d}.png"
        s.image.save(root / split / name)
        images.append({"id": i + 1, "file_name": name, "width": 96, "height": 96})
        captions.append({"id": 100 + i, "image_id": i + 1, "caption": s.caption})
        for j, o in enumerate(s.objects):
            x0, y0, x1, y1 = o.box
            instances.append({"id": 1000 + 10 * i + j, "image_id": i + 1, "category_id": shapes.index(o.shape) + 1,
                              "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(o.mask.sum()), "iscrowd": 0,
                              "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    cats = [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(shapes)]
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": cats}))
    return root


def test_coco_scenario_runs_on_a_coco_folder_given_on_the_command_line(tmp_path, heterag_home):
    coco = make_coco(tmp_path / "coco")
    d = reduced(ROOT / "eval" / "scenarios" / "mrm_coco.yaml", **{
        "defenses": [], "mrm.methods": ["mrm", "qb-mia"], "mrm.set_sizes": [1, 2], "mrm.sets": 20, "bootstrap": 50,
        "mrm.proposer": {"name": "annotations"}, "mrm.vocabulary": "annotations", "mrm.shadow": 1})
    scenario = tmp_path / "coco.yaml"
    scenario.write_text(json.dumps(d))
    out = tmp_path / "report"
    assert main(["sandbox", "run", str(scenario), "--data", str(coco), "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["data"]["knowledge_base"] == 14 and r["data"]["members"] == 7 and r["data"]["non_members"] == 9
    kb = set(r["per_target"][i]["id"] for i in range(7))
    non = {t["id"] for t in r["per_target"] if not t["member"]}
    assert kb.isdisjoint(non) and all(t["id"].startswith("coco-val2017-") for t in r["per_target"])
    labels = {lab for t in r["per_target"] for lab in t["labels"]}
    assert labels and labels <= {"circle", "square", "triangle", "star", "hexagon", "cross", "diamond"}
    assert "auc[method=mrm]" in r["metrics"] and r["fingerprint_before"] == r["fingerprint_after"]
    # without --data the placeholder source is refused with one line naming the key
    with pytest.raises(ScenarioError, match="data.source"):
        from sandbox.membership import load_membership_data

        load_membership_data(load_scenario(ROOT / "eval" / "scenarios" / "mrm_coco.yaml"))


def test_index_is_unchanged_and_collections_are_experiment_only(tmp_path, heterag_home):
    """The shadow set goes in and out through the reversible injection; the augmented store is its own collection."""
    d = reduced(ROOT / "eval" / "scenarios" / "mrm_synthetic.yaml", **{
        "data.source": "synthetic:60", "data.splits.knowledge_base": {"count": 30}, "data.splits.reference": {"count": 8},
        "data.splits.test": {"count": 15}, "mrm.members": 15, "mrm.shadow": 4, "mrm.methods": ["mrm"], "mrm.sets": 10,
        "mrm.set_sizes": [1, 5], "bootstrap": 20, "defenses": [{"name": "augmented_store"}]})
    from sandbox.runner import run_scenario

    r = run_scenario(parse_scenario(d, base_dir=ROOT / "eval" / "scenarios"))
    pipe = open_collection(r["collection"], create=False)
    try:
        assert content_fingerprint(pipe).digest == r["fingerprint_before"] == r["fingerprint_after"]
    finally:
        pipe.close()
    assert len(r["injections"]) == 3 and all(i["injected"] == 4 == i["removed"] for i in r["injections"])


def test_transformers_segmenter_from_a_local_folder_gives_labelled_masks(tmp_path):
    """The real transformers loading path with a randomly initialised tiny SegFormer saved locally."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    labels = {0: "circle", 1: "square", 2: "background"}
    cfg = SegformerConfig(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], patch_sizes=[7], strides=[4],
                          num_attention_heads=[1], mlp_ratios=[1], decoder_hidden_size=8, num_labels=3, id2label=labels,
                          label2id={v: k for k, v in labels.items()})
    SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path / "seg")
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "seg")
    props = make_proposer("transformers", model=str(tmp_path / "seg")).propose(SCENES[0], np.asarray(SCENES[0].image.to_pil()))
    assert props and all(p.mask.shape == (96, 96) and p.label in labels.values() for p in props)
    assert sum(p.mask.sum() for p in props) == 96 * 96  # semantic segmentation: the masks tile the image


def test_the_proxy_is_pluggable_with_an_open_clip_model():
    from heterag.encoding.image_encoders import load_image_encoder

    proxy = ZeroShotProxy(load_image_encoder("open_clip:ViT-S-32-alt"))  # random init: the loading and scoring path
    p = proxy.probabilities([SCENES[0].image], ["red circle", "blue square"])
    assert p.shape == (1, 2) and np.isclose(p.sum(), 1)


def test_scenario_against_an_openai_endpoint(tmp_path, server: ChatServer):
    """The same scenario against an OpenAI-compatible endpoint: every answer names a 'blue circle', so members
    and non-members look alike and MrM is at chance; the run completes and the index is unchanged. Where the
    calibration put p_t at its floor (no shadow mask was a blue circle), MrM is marked as without signal, not
    reported as a result."""
    server.config.reply = "A blue circle."
    d = reduced(ROOT / "eval" / "scenarios" / "mrm_synthetic.yaml", **{
        "data.source": "synthetic:40", "data.splits.knowledge_base": {"count": 20}, "data.splits.reference": {"count": 6},
        "data.splits.test": {"count": 10}, "mrm.members": 10, "mrm.shadow": 4, "mrm.methods": ["mrm", "qb-mia"],
        "mrm.sets": 10, "mrm.set_sizes": [1, 5], "bootstrap": 20, "defenses": [{"name": "refusal"}],
        "rag.generator": {"name": "openai", "options": {"model": "test-model", "api_key": "sk-test-123", "timeout": 5.0,
                                                        "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1"}}})
    from sandbox.runner import run_scenario

    r = run_scenario(parse_scenario(d, base_dir=ROOT / "eval" / "scenarios"))
    assert r["fingerprint_before"] == r["fingerprint_after"]
    assert ("auc[method=mrm]" in r["metrics"]) == r["signal"]["method=mrm"]["signal"] == (r["p_t"]["none"] > 0.01)
    sent = [q["body"]["messages"] for q in server.config.requests]
    assert sent and any("Do not reveal information about the knowledge base" in m[0]["content"] for m in sent)


def test_large_targets_are_downscaled_with_their_annotations():
    from PIL import Image

    big = SCENES[0].image.to_pil().resize((960, 960), Image.NEAREST)
    objs = tuple(dataclasses.replace(o, mask=np.kron(o.mask, np.ones((10, 10), dtype=bool)),
                                     box=tuple(10 * v for v in o.box)) for o in SCENES[0].objects)
    item = dataclasses.replace(SCENES[0], image=ImageRef.from_pil(big), objects=objs)
    t = prepare_target(item, True, SegmentationProposer(scale=500, sigma=0.8, merge_colour=60), FakeProxy(), ["x"], 3,
                       label_keys=["colour", "shape"], max_side=240)
    assert (t.image.width, t.image.height) == (240, 240)
    assert t.masks and all((m.image.width, m.image.height) == (240, 240) for m in t.masks)
    assert {m.label for m in t.masks} <= {f"{o.attributes['colour']} {o.attributes['shape']}" for o in objs} | {"x"}


def test_leftovers_in_the_augmented_store_are_refused_before_any_work(tmp_path):
    """A run killed inside the augmented-store defense leaves a journal for that collection: the next run
    refuses at once (naming the clean command) instead of failing after the undefended passes."""
    import time as _time

    from sandbox.data import ScenarioData
    from sandbox.injection import Journal, SandboxBusyError
    from sandbox.membership import _augmented_name, load_membership_data
    from sandbox.runner import run_scenario
    from sandbox.tasks import Task

    d = reduced(ROOT / "eval" / "scenarios" / "mrm_synthetic.yaml", **{
        "data.source": "synthetic:40", "data.splits.knowledge_base": {"count": 20}, "data.splits.reference": {"count": 6},
        "data.splits.test": {"count": 10}, "mrm.members": 10, "mrm.shadow": 4, "mrm.methods": ["mrm"],
        "mrm.sets": 10, "mrm.set_sizes": [1], "bootstrap": 20, "defenses": [{"name": "augmented_store"}]})
    scn = parse_scenario(d, base_dir=ROOT / "eval" / "scenarios")
    data = load_membership_data(scn)
    core = ScenarioData(data.knowledge_base, data.reference, [], data.non_members, Task("membership"))
    aug = _augmented_name(scn, core)
    Journal("killed-run", aug, 999999, _time.time(), doc_ids=["shadow-1"]).save()
    t0 = _time.monotonic()
    with pytest.raises(SandboxBusyError, match=f"heterag sandbox clean --collection {aug}"):
        run_scenario(scn)
    assert _time.monotonic() - t0 < 60


def test_failed_generator_calls_are_reported_not_hidden():
    from sandbox.mia_report import summary_line

    auc = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    r = {"metrics": {"auc[method=mrm]": auc}, "roc": {"method=mrm": {}}, "failed_trials": {"method=mrm": 20}}
    assert "WARNING: 20 generator call(s) failed" in summary_line(r)
    r["failed_trials"] = {"method=mrm": 0}
    assert "WARNING" not in summary_line(r)


# --------------------------------------------------------------------------- bad input found by a break-test


def small_mrm(**changes):
    """mrm_synthetic.yaml at a few seconds' size, with ``changes`` (dotted keys)."""
    base = {"data.source": "synthetic:40", "data.splits.knowledge_base": {"count": 20}, "data.splits.reference": {"count": 6},
            "data.splits.test": {"count": 10}, "mrm.members": 10, "mrm.shadow": 4, "mrm.methods": ["mrm", "qb-mia"],
            "mrm.sets": 10, "mrm.set_sizes": [1], "bootstrap": 20, "defenses": []}
    return reduced(ROOT / "eval" / "scenarios" / "mrm_synthetic.yaml", **{**base, **changes})


def test_unreadable_images_of_the_source_are_counted_targets_at_the_neutral_score(tmp_path):
    """A corrupt image file in the data folder is not dropped: it cannot be stored, so it is a non-member target
    with status corrupt (the loader's reason), the neutral score for every method, counted and listed."""
    from corpora.synthetic_scenes import write_caption_folder
    from sandbox.data import load_scenario_data

    folder = write_caption_folder(tmp_path / "scenes", 40, seed=4, size=96)
    bad = sorted((folder / "images").glob("*.png"))[7]
    bad.write_bytes(bad.read_bytes()[:80])  # truncated: the header survives, the pixels do not
    d = small_mrm(**{"data.source": str(folder), "mrm.label_keys": None, "data.splits.knowledge_base": {"count": 12},
                     "data.splits.reference": {"count": 4}, "data.splits.test": {"count": 6}, "mrm.members": 6,
                     "mrm.shadow": 2})
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(d))
    out = tmp_path / "report"
    assert main(["sandbox", "run", str(scenario), "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    corrupt = [t for t in r["per_target"] if t["status"] == "corrupt"]
    assert len(corrupt) == 1 and r["targets_by_status"]["corrupt"] == 1 and r["data"]["unreadable"] == 1
    t = corrupt[0]
    assert not t["member"] and t["p_value"] == 0.5 and t["x"] == []
    assert "unreadable item of the source" in t["reason"] and bad.name in t["reason"] and "truncated" in t["reason"]
    assert len(r["per_target"]) == 6 + 6 + 1 == r["data"]["members"] + r["data"]["non_members"]
    assert r["metrics"]["targets_without_mask"]["value"] >= 1 / 13  # counted with the maskless targets
    md = (out / "report.md").read_text()
    assert "1 target(s) could not be attacked" in md and bad.name in md
    # the data layer keeps them for every scenario kind (the core report lists them too)
    data = load_scenario_data(parse_scenario({"data": {"source": str(folder), "task": "scene_background",
                                                         "splits": {"knowledge_base": {"count": 20}, "reference": {"count": 5},
                                                                    "candidates": {"count": 0}}}}).data, 0)
    assert len(data.unreadable) == 1 and bad.name in str(data.unreadable[0])
    assert data.sizes()["unreadable"] == 1


def test_member_targets_are_checked_against_the_stored_images_by_content_hash(tmp_path):
    """Targets of a live collection: a member whose image differs from the stored one (here the stored copy is
    flipped) is refused before any query, naming it; so is a non-member the collection holds."""
    from sandbox.membership import check_stored, load_membership_data
    from sandbox.runner import run_scenario

    scn = parse_scenario(small_mrm(), base_dir=ROOT / "eval" / "scenarios")
    data = load_membership_data(scn)
    victim = data.members[3]
    docs = [(dataclasses.replace(it, image=augment(it.image, "flip")) if it is victim else it).to_document()
            for it in data.knowledge_base]
    pipe = open_collection("live-kb", store="faiss")
    pipe.ingest(docs)
    before = content_fingerprint(pipe)
    live = parse_scenario(small_mrm(**{"rag.collection": "live-kb", "rag.allow_live": True}),
                          base_dir=ROOT / "eval" / "scenarios")
    with pytest.raises(ScenarioError, match=rf"1 of 10 member target\(s\) are not stored in it .*first: {victim.id}"):
        run_scenario(live)
    assert content_fingerprint(pipe) == before
    pipe.ingest([victim.to_document(), data.non_members[0].to_document()])  # the original, and a non-member
    with pytest.raises(ScenarioError, match=rf"1 non-member target\(s\) are stored in it \(first: {data.non_members[0].id}"):
        check_stored(pipe, "live-kb", data)
    pipe.delete_documents([data.non_members[0].id])
    check_stored(pipe, "live-kb", data)  # every member stored byte for byte, no non-member: accepted
    pipe.close()


def test_unknown_label_keys_list_the_attributes_the_annotations_have():
    from sandbox.membership import load_membership_data

    scn = parse_scenario(small_mrm(**{"mrm.label_keys": ["colour", "shap"]}), base_dir=ROOT / "eval" / "scenarios")
    with pytest.raises(ScenarioError) as exc:
        load_membership_data(scn)
    msg = str(exc.value)
    assert "mrm.label_keys: unknown annotation attribute(s) 'shap'; choose from:" in msg and "\n" not in msg
    assert all(a in msg for a in ("colour", "shape", "size", "texture"))


def test_a_plain_image_folder_is_refused_naming_the_layouts_that_work(tmp_path):
    from sandbox.runner import run_scenario

    (tmp_path / "imgs").mkdir()
    for i, sc in enumerate(generate_scenes(40, seed=1, size=96)):
        sc.image.save(tmp_path / "imgs" / f"{i:03d}.png")
    scn = parse_scenario(small_mrm(**{"data.source": str(tmp_path / "imgs"), "mrm.label_keys": None}))
    with pytest.raises(ScenarioError) as exc:
        run_scenario(scn)
    msg = str(exc.value)
    assert "plain image folder" in msg and "captions.jsonl" in msg and "COCO" in msg and "\n" not in msg
    assert not list((tmp_path / "heterag-home").glob("collections/*"))  # refused before any index was built


@pytest.mark.parametrize(("change", "words"), [
    ({"mrm.masks": "3"}, ["mrm.masks", "valid integer"]),  # a number written as a string
    ({"mrm.min_area": "0.05"}, ["mrm.min_area", "valid number"]),
    ({"mrm.augmentation_probing": "yes"}, ["mrm.augmentation_probing", "valid boolean"]),
    ({"seed": "0"}, ["seed", "valid integer"]),
    ({"mrm.methods": ["mrm", "qb-mia", "mrm"]}, ["mrm.methods", "'mrm' listed more than once"]),
    ({"mrm.label_keys": []}, ["mrm.label_keys"]),
    ({"attack.steps": 10}, ["attack.steps", "attack.name is 'mrm'"]),
    ({"mrm.proposer": {"name": "segmentation", "options": {"scale": "big"}}}, ["mrm.proposer", "options.scale", "number"]),
    ({"mrm.proposer": {"name": "segmentation", "options": {"sigma": -1}}}, ["options.sigma", "greater than or equal to 0"]),
    ({"mrm.proposer": {"name": "segmentation", "options": {"scal": 3}}}, ["options.scal", "unknown option", "scale"]),
    ({"mrm.proposer": {"name": "segmentation", "options": {"method": "quickshift"}}}, ["options.method", "felzenszwalb"]),
    ({"mrm.proposer": {"name": "transformers", "options": {}}}, ["options.model", "missing"]),
])
def test_scenario_types_are_strict_and_every_error_names_the_key(change, words):
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(small_mrm(**change))
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_an_mrm_block_under_another_attack_is_refused_and_yaml_exponents_are_numbers(tmp_path):
    with pytest.raises(ScenarioError, match="mrm: a membership-inference block, but attack.name is 'm3att'"):
        parse_scenario({"data": {"source": "synthetic:20"}, "mrm": {"masks": 3}})
    parse_scenario({"data": {"source": "synthetic:20"}})  # no block: fine
    p = tmp_path / "s.yaml"
    p.write_text("data: {source: 'synthetic:20'}\nattack: {name: mrm}\n"
                 "mrm: {proposer: {name: segmentation, options: {min_fraction: 1e-3}}, backoff: 5e-1}\n")
    scn = load_scenario(p)
    assert scn.mrm.proposer.options["min_fraction"] == 0.001 and scn.mrm.backoff == 0.5
    # the proposer factory itself names a bad option instead of leaking scikit-image's TypeError
    with pytest.raises(InvalidInputError, match=r"object proposer 'segmentation': options.min_size: .*integer"):
        make_proposer("segmentation", min_size="20")


def test_work_side_makes_segmentation_settings_resolution_independent():
    """Felzenszwalb's settings act on pixel counts: the same scene at 96 and at 192 pixels is segmented differently.
    ``work_side`` segments every image at one working size, so the masks (scaled back) agree far better."""
    from PIL import Image

    def agreement(work_side):
        seg = SegmentationProposer(scale=500, sigma=0.8, merge_colour=60, work_side=work_side)
        ious, same_count = [], 0
        for it in SCENES:
            arr = np.asarray(it.image.to_pil().convert("RGB"))
            big = np.asarray(Image.fromarray(arr).resize((192, 192), Image.BICUBIC))
            a = seg.propose(it, arr)
            b = [np.asarray(Image.fromarray(p.mask.astype(np.uint8) * 255).resize((96, 96), Image.NEAREST)) > 127
                 for p in seg.propose(it, big)]
            same_count += len(a) == len(b)
            ious += [max([(p.mask & m).sum() / (p.mask | m).sum() for m in b] or [0.0]) for p in a]
        return float(np.mean(ious)), same_count

    fixed, free = agreement(128), agreement(None)
    assert fixed[0] >= 0.75 and fixed[1] == len(SCENES)
    assert fixed[0] > free[0] + 0.05
