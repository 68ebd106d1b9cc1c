"""Image items end to end: ingest (library and CLI), fused retrieval, image questions, bad images, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from store_servers import chroma_server, milvus_lite, pg_server, store_spec  # noqa: F401 - session fixtures
from test_images import write_bomb

from corpora.synthetic_scenes import generate_scenes, render_scene, write_caption_folder
from heterag import STORES, Document, FingerprintMismatchError, open_collection
from heterag.cli import main
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef
from heterag.retrieval.fusion import Fusion

N = 12


@pytest.fixture(scope="module")
def scenes():
    return list(generate_scenes(N, seed=7, size=96))


@pytest.fixture()
def captions_dir(tmp_path: Path) -> Path:
    return write_caption_folder(tmp_path / "scenes", N, seed=7, size=96)


def add_bad_items(folder: Path, good: Path) -> list[str]:
    """Append one bad item of each kind to a captions folder; returns the file names that must be reported."""
    images = folder / "images"
    (images / "corrupt.jpg").write_bytes(good.read_bytes()[:200])
    (images / "empty.png").write_bytes(b"")
    (images / "notes.png").write_text("not an image")
    write_bomb(images / "bomb.png")
    lines = [json.dumps({"image": f"images/{n}", "caption": f"bad {n}"}) for n in
             ("corrupt.jpg", "empty.png", "notes.png", "bomb.png", "missing.png")]
    with (folder / "captions.jsonl").open("a") as f:
        f.write("\n".join(lines) + "\n")
    return ["corrupt.jpg", "empty.png", "notes.png", "bomb.png", "missing.png"]


def test_cli_ingests_image_layout_reports_each_bad_item_and_keeps_the_rest(captions_dir: Path, capsys):
    assert main(["ingest", str(captions_dir), "--collection", "scenes"]) == 0
    first = capsys.readouterr().out
    chunks = int(first.split("collection now holds ")[1].split()[0])
    assert chunks >= N and f"{chunks} chunks and {N} images" in first  # long captions take two chunks
    bad = add_bad_items(captions_dir, next((captions_dir / "images").glob("*.png")))
    assert main(["ingest", str(captions_dir), "--collection", "scenes"]) == 1
    out, err = capsys.readouterr()
    for name in bad:
        assert sum(name in line for line in err.splitlines()) == 1, (name, err)
    assert "0 documents written" in out and f"{N} unchanged, 5 failed" in out
    assert f"{chunks} chunks and {N} images" in out  # nothing stored was lost
    pipe = open_collection("scenes", create=False)
    try:
        files = list((pipe.image_files.root).rglob("*.png"))
        assert len(files) == N and not list(pipe.image_files.root.rglob(".tmp*"))
    finally:
        pipe.close()


@pytest.fixture(params=sorted(STORES))
def store_kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend name, store spec): server backends use the session's server (tests/store_servers.py)."""
    return request.param, store_spec(request, request.param)


def test_image_query_finds_the_item_and_text_query_fuses_signals(store_kind: tuple[str, str], scenes):
    kind, store = store_kind
    pipe = open_collection(f"mm-{kind}", store=store)
    try:
        report = pipe.ingest([s.to_document() for s in scenes])
        assert report.images_written == N and not report.failures
        assert pipe.ingest([s.to_document() for s in scenes]).documents_unchanged == N  # idempotent
        target = scenes[3]
        hits = pipe.retrieve(image=target.image, k=3)
        assert hits[0].doc_id == target.id and set(hits[0].scores) == {"image"}
        assert hits[0].scores["image"] == pytest.approx(1.0, abs=1e-3)
        assert hits[0].image and Path(hits[0].image).read_bytes() == target.to_document().image.data
        assert hits[0].text and hits[0].text in target.caption and hits[0].index == 0
        both = pipe.retrieve(target.caption, image=target.image, k=3, retrieval="dense")
        assert both[0].doc_id == target.id and set(both[0].scores) == {"text", "image", "cross"}
        w = both[0].scores
        assert both[0].score == pytest.approx((w["text"] + 2 * w["image"] + 0.5 * w["cross"]) / 3.5, abs=1e-5)
        text_only = pipe.retrieve(target.caption, k=3, retrieval="dense")
        assert text_only[0].doc_id == target.id and set(text_only[0].scores) == {"text", "cross"}
        hybrid = pipe.retrieve(target.caption, image=target.image, k=3, retrieval="hybrid")  # the three lists fused with keywords
        assert hybrid[0].doc_id == target.id and set(hybrid[0].scores) == {"text", "image", "cross", "keyword"}
        assert set(hybrid[0].found_by) == {"dense", "keyword"}
        rrf = pipe.retrieve(target.caption, image=target.image, k=3, fusion=Fusion(method="rrf"), retrieval="dense")
        assert rrf[0].doc_id == target.id and 0 < rrf[0].score <= 3.5 / 61  # weights 1 + 2 + 0.5, best rank 1
        filtered = pipe.retrieve(image=target.image, k=3, where={"doc_id": {"$ne": target.id}})
        assert filtered and target.id not in {h.doc_id for h in filtered}
    finally:
        pipe.close()


def test_image_only_items_and_image_queries_on_text_collections(tmp_path: Path, scenes):
    pipe = open_collection("plain")
    try:
        pipe.ingest([Document.create("Tides follow the Moon.", title="Tides")])
        assert pipe.retrieve(image=scenes[0].image) == []  # nothing to match an image against
        hits = pipe.retrieve("What causes tides?", retrieval="dense")
        assert hits[0].scores.keys() == {"text"} and hits[0].image is None
        pipe.ingest([Document.create(image=s.image, id=f"img-{i}") for i, s in enumerate(scenes[:4])])
        hits = pipe.retrieve(image=scenes[2].image, k=2)
        assert hits[0].doc_id == "img-2" and hits[0].text == "" and Path(hits[0].image).exists()
        assert pipe.count() == 1 and pipe.image_store.count() == 4
    finally:
        pipe.close()


def test_changed_image_replaces_record_and_file_delete_cleans_up(scenes):
    pipe = open_collection("edit")
    try:
        pipe.ingest([Document.create("a scene", image=scenes[0].image, id="item")])
        assert pipe.count() == 1 and pipe.image_store.count() == 1
        old_sha = ImageRef.from_pil(scenes[0].image).sha256
        pipe.ingest([Document.create("a scene", image=scenes[1].image, id="item")])
        assert pipe.image_store.count() == 1 and pipe.count() == 1
        assert old_sha not in pipe.image_files.shas()
        assert pipe.retrieve(image=scenes[1].image, k=1)[0].doc_id == "item"
        assert pipe.delete_documents(["item"]) == 2
        assert pipe.image_store.count() == 0 and pipe.count() == 0 and pipe.image_files.shas() == set()
    finally:
        pipe.close()


def test_crash_between_text_and_image_writes_is_completed_by_rerun(scenes, monkeypatch):
    pipe = open_collection("crash", store="faiss")
    docs = [s.to_document() for s in scenes[:6]]
    try:
        real = pipe.image_store.upsert

        def boom(records):
            raise RuntimeError("power cut")

        monkeypatch.setattr(pipe.image_store, "upsert", boom)
        with pytest.raises(RuntimeError):
            pipe.ingest(docs)
        chunks = pipe.count()
        assert chunks >= 6 and pipe.image_store.count() == 0  # text in, images not
        monkeypatch.setattr(pipe.image_store, "upsert", real)
        report = pipe.ingest(docs)
        assert report.documents_written == 6 and pipe.count() == chunks and pipe.image_store.count() == 6
        assert pipe.retrieve(image=scenes[4].image, k=1)[0].doc_id == scenes[4].id
    finally:
        pipe.close()


def test_other_image_encoder_is_refused_and_data_survives(scenes):
    pipe = open_collection("fp")
    pipe.ingest([scenes[0].to_document()])
    pipe.close()
    with pytest.raises(FingerprintMismatchError, match="uses --image-encoder default, not open_clip:RN50"):
        open_collection("fp", image_encoder="open_clip:RN50")
    pipe = open_collection("fp")
    try:
        assert pipe.image_store.count() == 1
    finally:
        pipe.close()


def test_cli_ask_with_image_with_and_without_question(captions_dir: Path, tmp_path: Path, capsys):
    assert main(["ingest", str(captions_dir), "--collection", "ask"]) == 0
    capsys.readouterr()
    scene = render_scene(5, seed=7, size=96)
    query = tmp_path / "query.jpg"
    scene.image.save(query, quality=60)
    assert main(["ask", "--image", str(query), "--collection", "ask", "--json", "-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["retrieved"][0]["doc_id"] == "images/synthetic-7-5.png"
    assert out["answer"] and out["sources"][0]["image"].endswith(".png")
    assert scene.caption.split(",")[0] in out["answer"]
    assert main(["ask", "How many objects are there?", "--image", str(query), "--collection", "ask", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["retrieved"][0]["doc_id"] == "images/synthetic-7-5.png"
    assert set(out["retrieved"][0]["scores"]) == {"text", "image", "cross"}  # no keyword matches "objects": dense alone
    (tmp_path / "bad.png").write_text("nope")
    assert main(["ask", "--image", str(tmp_path / "bad.png"), "--collection", "ask"]) == 2
    assert "bad.png: not a recognised image" in capsys.readouterr().err
    assert main(["ask", "--collection", "ask"]) == 2


def test_cli_eval_images_prints_the_documented_keys(captions_dir: Path, capsys):
    assert main(["eval", "images", str(captions_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("recall@1[mask]", "recall@1[jpeg50]", "recall@1[crop90]", "text_to_image_recall@5"):
        assert 0.0 <= res[key] <= 1.0
    assert res["images"] == N and res["layout"] == "captions"
    assert res["recall@1[jpeg50]"] >= 0.9
    assert res["text_to_image_recall@5"] > 5 / N  # better than chance
    assert main(["eval", "images", str(captions_dir), "--encoder", "nope"]) == 2
    assert main(["eval", "images", str(captions_dir), "--variants", "blur"]) == 2


def test_fusion_rule_validation():
    assert Fusion.parse("rrf").method == "rrf"
    assert Fusion().weights == {"text": 1.0, "image": 2.0, "cross": 0.5}
    f = Fusion.parse("weighted:image=2,cross=0")
    assert f.weight("image") == 2 and f.weight("cross") == 0 and f.weight("text") == 1
    assert f.fuse([{"text": 0.5, "image": 0.8}]) == [pytest.approx((0.5 + 1.6) / 3)]
    # a text query: an image-text item is judged on its text like a text-only chunk; cross-modal evidence only adds
    d = Fusion()
    caption_of_a_chart, page, photo = {"text": 0.80, "cross": -0.07}, {"text": 0.69}, {"text": 0.30, "cross": 0.90}
    assert d.fuse([caption_of_a_chart, page, photo]) == [pytest.approx(0.80), pytest.approx(0.69),
                                                         pytest.approx((0.30 + 0.5 * 0.90) / 1.5)]
    assert d.fuse([{"cross": 0.25}]) == [pytest.approx(0.25)]  # an image without text: cross alone, as before
    # a query with an image keeps the plain weighted mean over all three signals
    assert d.fuse([{"text": 0.8, "image": 0.1, "cross": -0.07}]) == [pytest.approx((0.8 + 0.2 - 0.035) / 3.5)]
    # rrf: ranks per signal among the candidates that have it; a missing signal adds nothing
    rrf = Fusion(method="rrf", rrf_k=10, weights={"text": 1.0, "image": 2.0, "cross": 1.0})
    got = rrf.fuse([{"text": 0.9, "image": 0.1}, {"text": 0.5, "image": 0.7}, {"image": 0.9}])
    assert got == [pytest.approx(1 / 11 + 2 / 13), pytest.approx(1 / 12 + 2 / 12), pytest.approx(2 / 11)]
    for bad in ("mean", "weighted:colour=1", "weighted:text=-1", "weighted:text"):
        with pytest.raises(InvalidInputError):
            Fusion.parse(bad)


def test_sixteen_bit_cmyk_palette_alpha_images_ingest(tmp_path: Path):
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(np.full((40, 40), 30000, np.uint16), mode="I;16").save(folder / "g16.png")
    Image.new("CMYK", (40, 40), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([10, 200, 10] * 256)
    pal.save(folder / "pal.png", transparency=0)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    pipe = open_collection("odd")
    try:
        from corpora.files import iter_path

        report = pipe.ingest(iter_path(folder))
        assert not report.failures and pipe.image_store.count() == 4
        assert pipe.retrieve(image=folder / "cmyk.jpg", k=1)[0].doc_id == "cmyk.jpg"
    finally:
        pipe.close()


def make_coco_from_scenes(root: Path, n: int = 8, split: str = "val2017") -> Path:
    """A real COCO 2017 layout (captions + instances with polygon segmentations) built from synthetic scenes."""
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    images, captions, instances = [], [], []
    shapes = sorted({o.shape for s in generate_scenes(n, seed=11, size=96) for o in s.objects})
    for i, s in enumerate(generate_scenes(n, seed=11, size=96)):
        name = f"{i + 1:012d}.png"
        s.image.save(root / split / name)
        images.append({"id": i + 1, "file_name": name, "width": 96, "height": 96})
        captions.append({"id": 100 + i, "image_id": i + 1, "caption": s.caption})
        for j, o in enumerate(s.objects):
            x0, y0, x1, y1 = o.box
            instances.append({"id": 1000 + 10 * i + j, "image_id": i + 1, "category_id": shapes.index(o.shape) + 1,
                              "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(o.mask.sum()), "iscrowd": 0,
                              "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    cats = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(shapes)]
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": cats}))
    return root


def test_coco_layout_ingests_and_evaluates_with_object_masks(tmp_path: Path, capsys):
    root = make_coco_from_scenes(tmp_path / "coco")
    assert main(["eval", "images", str(root), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["layout"] == "coco" and res["images"] == 8 and "text_to_image_recall@5" in res
    assert res["mask_object_share"] > 0.5  # the mask variant hid annotated objects, not random boxes
    assert main(["ingest", str(root), "--collection", "coco"]) == 0
    assert "8 images" in capsys.readouterr().out
    first = render_scene(0, seed=11, size=96)
    assert main(["ask", "--image", str(root / "val2017" / "000000000001.png"), "--collection", "coco", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["retrieved"][0]["doc_id"] == "coco-val2017-1" and first.caption.split(",")[0] in out["answer"]


def test_cli_ingests_a_medmnist_split_and_a_single_image(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    npz = tmp_path / "toymnist.npz"
    np.savez(npz, train_images=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), train_labels=np.array([[0], [1], [0], [1], [1]]),
             val_images=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), val_labels=np.array([[1], [0], [1]]))
    assert main(["ingest", str(npz), "--collection", "toy", "--split", "val"]) == 0
    assert "3 images" in capsys.readouterr().out
    single = tmp_path / "one.png"
    render_scene(1, seed=5, size=64).image.save(single)
    assert main(["ingest", str(single), "--collection", "toy"]) == 0
    assert "4 images" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "missing.png"), "--collection", "toy"]) == 2
    assert main(["ingest", str(npz), "--collection", "toy", "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "nope" in err
    pipe = open_collection("toy", create=False)
    try:
        assert pipe.image_store.count() == 4
        assert pipe.retrieve(image=single, k=1)[0].doc_id == "one.png"
    finally:
        pipe.close()
