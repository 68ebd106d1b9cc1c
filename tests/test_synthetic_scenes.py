"""Synthetic scenes: determinism, annotation correctness (masks, captions, QA) and the writers."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpora.synthetic_scenes import (
    BACKGROUND_COLOURS,
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    Scene,
    generate_scenes,
    iter_synthetic_documents,
    position_of,
    render_scene,
    write_caption_folder,
)
from heterag.core.errors import InvalidInputError


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return list(generate_scenes(40, seed=3, size=96))


@pytest.fixture(scope="module")
def many() -> list[Scene]:
    """200 small scenes for distribution checks."""
    return list(generate_scenes(200, seed=11, size=48))


def pixels(scene: Scene) -> np.ndarray:
    return np.asarray(scene.image)


# --------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_scenes() -> None:
    a, b = render_scene(7, seed=5, size=64), render_scene(7, seed=5, size=64)
    assert np.array_equal(pixels(a), pixels(b))
    assert a.caption == b.caption and a.qa == b.qa and a.background == b.background
    assert a.objects == b.objects  # masks compared element-wise
    assert a == b


def test_render_scene_equals_the_matching_item_of_any_slice() -> None:
    full = list(generate_scenes(12, seed=2, size=64))
    part = list(generate_scenes(4, seed=2, size=64, start=8))
    for i in (0, 5, 11):
        single = render_scene(i, seed=2, size=64)
        assert single.index == full[i].index == i
        assert np.array_equal(pixels(single), pixels(full[i]))
        assert single.caption == full[i].caption
    for k, scene in enumerate(part):
        assert scene.index == 8 + k
        assert np.array_equal(pixels(scene), pixels(full[8 + k])) and scene.caption == full[8 + k].caption


def test_different_seeds_and_indices_differ() -> None:
    a = list(generate_scenes(10, seed=0, size=64))
    b = list(generate_scenes(10, seed=1, size=64))
    assert sum(x.caption != y.caption for x, y in zip(a, b, strict=True)) >= 9
    assert all(not np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b, strict=True))
    assert len({s.caption for s in a}) == 10


def test_objects_and_caption_do_not_depend_on_the_image_size() -> None:
    small, large = render_scene(4, seed=9, size=64), render_scene(4, seed=9, size=160)
    assert small.image.size == (64, 64) and large.image.size == (160, 160)
    assert [o.label for o in small.objects] == [o.label for o in large.objects]
    assert small.caption == large.caption


# --------------------------------------------------------------------------- distribution


def test_object_counts_cover_one_to_six(many: list[Scene]) -> None:
    counts = Counter(len(s.objects) for s in many)
    assert set(counts) <= set(range(1, 7))
    assert set(counts) == set(range(1, 7)) and min(counts.values()) >= 15, counts


def test_attributes_are_from_the_vocabulary_and_all_used(many: list[Scene]) -> None:
    objs = [o for s in many for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES) and len(SHAPES) >= 7
    assert {o.colour for o in objs} == set(COLOURS) and len(COLOURS) >= 8
    assert {o.size for o in objs} == set(SIZES)
    assert {o.texture for o in objs} == set(TEXTURES) == {"solid", "striped", "dotted", "checkered"}
    assert {o.position for o in objs} == set(POSITIONS)
    assert {s.background for s in many} == set(BACKGROUNDS)


def test_captions_are_diverse(many: list[Scene]) -> None:
    captions = [s.caption for s in many]
    assert len(set(captions)) >= 0.95 * len(captions)


# --------------------------------------------------------------------------- image and masks


def test_image_is_rgb_of_the_requested_size(scenes: list[Scene]) -> None:
    for s in scenes:
        assert isinstance(s.image, Image.Image) and s.image.mode == "RGB" and s.image.size == (96, 96)


def test_masks_are_nonempty_inside_their_box_and_disjoint(scenes: list[Scene]) -> None:
    for s in scenes:
        taken = np.zeros((96, 96), dtype=bool)
        for o in s.objects:
            assert o.mask.shape == (96, 96) and o.mask.dtype == bool
            assert o.mask.any(), (s.index, o.label)
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            inside = np.zeros_like(o.mask)
            inside[y0:y1, x0:x1] = True
            assert not (o.mask & ~inside).any()
            ys, xs = np.nonzero(o.mask)  # the box is tight
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == o.box
            assert not (taken & o.mask).any(), f"scene {s.index}: {o.label} overlaps an earlier mask"
            taken |= o.mask
            assert not o.mask.flags.writeable


def test_objects_are_mostly_visible(scenes: list[Scene]) -> None:
    """Placement avoids heavy overlap: every object shows at least half of its smallest possible
    area (a star: about 1.6 r^2), and the last one drawn, on top of all, shows all of it."""
    for s in scenes:
        for k, o in enumerate(s.objects):
            r = SIZES[o.size] * 96
            least = 1.6 * r * r * (1.0 if k == len(s.objects) - 1 else 0.5)
            assert o.mask.sum() >= 0.85 * least, (s.index, o.label, int(o.mask.sum()), least)


def _background_palette() -> np.ndarray:
    """Every background base colour at the brightness range gradients span (0.7x .. 1.3x)."""
    return np.asarray(
        [[min(255.0, c * scale) for c in bg] for bg in BACKGROUND_COLOURS.values() for scale in np.linspace(0.7, 1.3, 7)]
    )


def _distance(px: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance of each pixel (N, 3) to each colour (K, 3): (N, K)."""
    return np.sqrt(((px[:, None, :] - colours[None].astype(float)) ** 2).sum(-1))


def _interior(mask: np.ndarray) -> np.ndarray:
    """Mask pixels whose four neighbours are in the mask too (not blended with the surroundings)."""
    m = np.pad(mask, 1)
    return mask & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each pixel to the RGB segment a-b (anti-aliased textures blend the two colours)."""
    ab = b - a
    t = np.clip(((px - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(px - (a + t[:, None] * ab), axis=1)


def test_mask_pixels_have_the_object_colour(scenes: list[Scene]) -> None:
    """Visible pixels of an object show its own colours (main or texture shade); only pixels at the
    edge may blend (anti-aliasing) with what is next to them."""
    mains = np.asarray([main for main, _ in COLOURS.values()], dtype=float)
    palette = np.asarray([c for pair in COLOURS.values() for c in pair], dtype=float)
    owners = np.asarray([name for name in COLOURS for _ in range(2)])
    background = _background_palette()
    for s in scenes:
        img = pixels(s).astype(float)
        outside = np.ones(img.shape[:2], dtype=bool)
        for o in s.objects:
            own = np.asarray(COLOURS[o.colour], dtype=float)
            inner = img[_interior(o.mask)]
            assert len(inner), (s.index, o.label)
            near = _distance(inner, own).min(1) < 12
            assert near.mean() >= 0.95, (s.index, o.label, near.mean())
            main_share = (_distance(inner, own[:1])[:, 0] < 12).mean()
            assert main_share >= 0.3, (s.index, o.label, main_share)  # the main colour is there
            # Edge pixels included: blends of the object's colours with its surroundings, mostly its own.
            close = _segment_distance(img[o.mask], own[0], own[1]) < 40
            assert close.mean() >= 0.6, (s.index, o.label, close.mean())
            # ...and for most of them the nearest object colour (main or shade) is the object's.
            nearest = owners[_distance(img[o.mask], palette).argmin(1)]
            assert (nearest == o.colour).mean() >= 0.6, (s.index, o.label)
            outside &= ~o.mask
        # Pixels outside every mask are background, not object colours.
        bg = img[outside]
        if len(bg):
            nearest_bg = _distance(bg, background).min(1)
            nearest_obj = _distance(bg, mains).min(1)
            assert (nearest_bg < nearest_obj).mean() >= 0.8, s.index


# --------------------------------------------------------------------------- caption and QA


def test_caption_names_every_object_and_the_background(scenes: list[Scene]) -> None:
    for s in scenes:
        text = s.caption
        assert text.endswith(f"on a {s.background}.") and text[0].isupper()
        assert len(text.split()) <= 60, text
        for o in s.objects:
            assert o.colour in text and o.shape in text
            texture = "" if o.texture == "solid" else f" {o.texture}"
            assert f"{o.size} {o.colour}{texture} {o.shape}" in text
        assert text.count(" a ") + text.startswith("A ") >= len(s.objects) + 1  # one article per object + background


def test_label_lists_all_attributes() -> None:
    obj = render_scene(0, seed=0, size=64).objects[0]
    assert obj.label == f"{obj.size} {obj.colour} {obj.texture} {obj.shape}"


def test_position_is_the_grid_cell_of_the_centre(scenes: list[Scene]) -> None:
    assert position_of(0, 0, 90, 90) == "top left" and position_of(89, 89, 90, 90) == "bottom right"
    assert position_of(45, 45, 90, 90) == "centre" and position_of(10, 45, 90, 90) == "left"
    for s in scenes:
        for o in s.objects:
            assert o.position == position_of(*o.center, 96, 96)
            x0, y0, x1, y1 = o.box
            assert x0 - 1 <= o.center[0] <= x1 + 1 and y0 - 1 <= o.center[1] <= y1 + 1


def test_qa_answers_agree_with_the_objects(scenes: list[Scene]) -> None:
    kinds: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for s in scenes:
        objs = s.objects
        assert len(s.qa) >= 4
        for qa in s.qa:
            kinds[qa.kind] += 1
            q = qa.question
            if q == "How many objects are there?":
                assert qa.answer == str(len(objs))
            elif qa.kind == "count" and "colour" in qa.metadata:
                assert qa.answer == str(sum(o.colour == qa.metadata["colour"] for o in objs))
            elif qa.kind == "count":
                assert qa.answer == str(sum(o.shape == qa.metadata["shape"] for o in objs))
            elif qa.kind == "colour":
                same = [o for o in objs if o.shape == qa.metadata["shape"]]
                assert len(same) == 1 and qa.answer == same[0].colour
                assert q == f"What colour is the {same[0].shape}?"
            elif qa.kind == "presence":
                c, sh = qa.metadata["colour"], qa.metadata["shape"]
                assert f"{c} {sh}?" in q
                exists = any(o.colour == c and o.shape == sh for o in objs)
                assert qa.answer == ("yes" if exists else "no")
                answers[qa.answer] += 1
            elif qa.kind == "position":
                same = [o for o in objs if o.colour == qa.metadata["colour"] and o.shape == qa.metadata["shape"]]
                assert len(same) == 1 and qa.answer == same[0].position and qa.answer in POSITIONS
            else:
                raise AssertionError(f"unexpected QA kind {qa.kind!r}")
    assert set(kinds) == {"colour", "count", "presence", "position"}
    assert answers["yes"] == answers["no"] == len(scenes)
    # Grammar: "an orange ...", never "a orange ...".
    assert not any("a orange" in qa.question for s in scenes for qa in s.qa)


def test_qa_is_deterministic() -> None:
    assert render_scene(3, seed=4, size=48).qa == render_scene(3, seed=4, size=48).qa


# --------------------------------------------------------------------------- documents and folders


def test_to_annotated_and_to_document() -> None:
    scene = render_scene(6, seed=8, size=64)
    ann = scene.to_annotated()
    assert ann.id == "synthetic-8-6" and ann.text == scene.caption and ann.title == ""
    assert ann.metadata == {"source": "synthetic_scenes", "seed": 8, "index": 6, "n_objects": len(scene.objects)}
    assert len(ann.objects) == len(scene.objects) and ann.qa == scene.qa
    for a, o in zip(ann.objects, scene.objects, strict=True):
        assert a.label == o.label and a.box == o.box and np.array_equal(a.mask, o.mask)
        assert dict(a.attributes) == {"shape": o.shape, "colour": o.colour, "size": o.size, "texture": o.texture,
                                      "position": o.position}
    assert np.array_equal(np.asarray(ann.image.to_pil()), pixels(scene))  # lossless
    doc = scene.to_document()
    again = render_scene(6, seed=8, size=64).to_document()
    assert doc.id == again.id and doc.text == scene.caption
    assert doc.image is not None and doc.image.sha256 == again.image.sha256
    assert doc.image.sha256 == hashlib.sha256(doc.image.data).hexdigest()
    assert (doc.image.width, doc.image.height) == (64, 64)
    assert doc.metadata["source"] == "synthetic_scenes"


def test_iter_synthetic_documents() -> None:
    docs = list(iter_synthetic_documents(5, seed=1, size=48))
    assert len(docs) == 5 and len({d.id for d in docs}) == 5
    assert [d.text for d in docs] == [s.caption for s in generate_scenes(5, seed=1, size=48)]


def test_write_caption_folder(tmp_path: Path) -> None:
    out = write_caption_folder(tmp_path / "caps", 6, seed=2, size=48)
    assert out == tmp_path / "caps"
    lines = (out / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    for i, line in enumerate(lines):
        row = json.loads(line)
        assert set(row) == {"image", "caption"}
        assert row["image"] == f"images/synthetic-2-{i}.png"
        path = out / row["image"]
        assert path.is_file()
        with Image.open(path) as img:
            assert img.size == (48, 48)
            assert np.array_equal(np.asarray(img.convert("RGB")), pixels(render_scene(i, seed=2, size=48)))
        assert row["caption"] == render_scene(i, seed=2, size=48).caption


def test_write_caption_folder_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InvalidInputError, match="not a directory"):
        write_caption_folder(target, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda: list(generate_scenes(-1)),
        lambda: list(generate_scenes(2.5)),  # type: ignore[arg-type]
        lambda: list(generate_scenes(True)),  # type: ignore[arg-type]
        lambda: list(generate_scenes(2, size=16)),
        lambda: list(generate_scenes(2, size=2048)),
        lambda: list(generate_scenes(2, seed=-1)),
        lambda: list(generate_scenes(2, start=-3)),
        lambda: render_scene(-1),
        lambda: render_scene(0, size="128"),  # type: ignore[arg-type]
        lambda: list(iter_synthetic_documents(-2)),
    ],
)
def test_bad_arguments_raise(call) -> None:
    with pytest.raises(InvalidInputError, match="^synthetic_scenes: "):
        call()


def test_bad_arguments_raise_before_iteration() -> None:
    with pytest.raises(InvalidInputError):
        generate_scenes(-1)  # not only when consumed


def test_zero_scenes() -> None:
    assert list(generate_scenes(0)) == []
