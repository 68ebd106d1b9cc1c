"""Training the default image encoder: a tiny end-to-end run, reproducibility, data sources,
augmentations and near-duplicate perturbations, the CLI entry points."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from corpora.synthetic_scenes import generate_scenes, write_caption_folder
from heterag.cli.train_image_encoder import add_train_arguments, run_train
from heterag.core.errors import InvalidInputError
from heterag.encoding.image_encoders import DEFAULT_CONFIG, DEFAULT_WEIGHTS, DefaultImageEncoder, load_image_encoder
from heterag.training.image_encoder import (
    TrainConfig,
    augment,
    build_training_data,
    instance_loss,
    lit_loss,
    procedural_image,
    recall_at,
    train_image_encoder,
)

#: A tiny network and input so a run takes a second or two.
TINY = {"procedural": 0, "widths": (8, 16, 32), "image_size": 48, "store_size": 64, "validation_scenes": 0, "threads": 1}


def test_tiny_training_run_writes_loadable_weights(tmp_path):
    cfg = TrainConfig(out_dir=tmp_path, synthetic=16, epochs=10, batch_size=16, lr=3e-3, log_every=1, **TINY)
    result = train_image_encoder(cfg)
    assert result.steps == 10 and result.n_images == 16 and result.n_captioned == 16
    assert [e["step"] for e in result.losses] == [float(s) for s in range(1, 11)]
    assert {"loss", "lit", "instance", "lit_temperature"} <= set(result.losses[0])
    # the objective goes down while memorising 16 scenes (measured: 4.46 -> ~2.3 over the last three steps)
    first, last = result.losses[0]["loss"], np.mean([e["loss"] for e in result.losses[-3:]])
    assert last < 0.75 * first, (first, last)

    assert result.weights_path == tmp_path / DEFAULT_WEIGHTS and result.config_path == tmp_path / DEFAULT_CONFIG
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    meta = json.loads(result.config_path.read_text())
    assert meta["architecture"]["widths"] == [8, 16, 32]
    assert meta["training"]["data"]["sources"] == {"synthetic_scenes": 16}
    assert meta["training"]["steps"] == 10 and len(meta["training"]["loss_curve"]) == 10

    enc = DefaultImageEncoder(tmp_path)
    assert (enc.dim, enc.image_size) == (384, 48)
    assert enc.identity.startswith("heterag-default-image-v1:sha256-")
    assert enc.identity != load_image_encoder("default").identity  # not the shipped weights' identity
    assert load_image_encoder(f"default:{tmp_path}").identity == enc.identity  # usable as a spec, e.g. --image-encoder
    with pytest.raises(InvalidInputError, match="no default_image_encoder.safetensors"):
        load_image_encoder(f"default:{tmp_path / 'nowhere'}")
    vecs = enc.encode_images([s.image for s in generate_scenes(3, seed=5, size=64)])
    assert vecs.shape == (3, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)


def test_training_is_reproducible_with_a_seed(tmp_path):
    kwargs = {"synthetic": 8, "epochs": 1, "batch_size": 4, **TINY}
    a = train_image_encoder(TrainConfig(out_dir=tmp_path / "a", **kwargs))
    b = train_image_encoder(TrainConfig(out_dir=tmp_path / "b", **kwargs))
    c = train_image_encoder(TrainConfig(out_dir=tmp_path / "c", seed=1, **kwargs))
    from safetensors.torch import load_file

    wa, wb, wc = (load_file(str(r.weights_path)) for r in (a, b, c))
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert [e["loss"] for e in a.losses] == [e["loss"] for e in b.losses]


def test_training_data_from_folders_extra_pairs_and_procedural(tmp_path, caplog):
    folder = write_caption_folder(tmp_path / "caps", 3, seed=9, size=80)
    (folder / "captions.jsonl").open("a").write('{"image": "images/missing.png", "caption": "gone"}\n')
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (50, 30), (200, 10, 10)).save(plain / "red.png")
    cfg = TrainConfig(out_dir=tmp_path / "w", synthetic=2, folders=(folder, plain), **{**TINY, "procedural": 2})
    extra = [(Image.new("L", (20, 90), 128), "a grey bar"), (Image.new("RGB", (64, 64)), None)]
    data = build_training_data(cfg, extra=extra)
    assert data.images.shape == (2 + 2 + 3 + 1 + 2, 64, 64, 3) and data.images.dtype == np.uint8
    assert data.sources == {"synthetic_scenes": 2, "procedural": 2, str(folder): 3, str(plain): 1, "extra": 2}
    assert data.captions[2:4] == [None, None] and data.captions[-2:] == ["a grey bar", None]
    assert all(isinstance(c, str) and c for c in data.captions[4:7])
    assert data.captions[7] is None  # an image folder without captions: instance loss only
    assert "missing.png" in caplog.text  # the bad caption line was skipped with a warning


def test_procedural_images_are_seeded():
    a, b = procedural_image(3, seed=1, size=64), procedural_image(3, seed=1, size=64)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(procedural_image(4, seed=1, size=64)))


def test_augment_is_seeded_and_covers_the_near_duplicate_perturbations():
    img = np.full((64, 64, 3), 200, dtype=np.uint8)
    same = [augment(img, np.random.default_rng([0, k])) for k in range(2)]
    assert np.array_equal(same[0], augment(img, np.random.default_rng([0, 0])))
    views = [augment(img, np.random.default_rng([1, k])) for k in range(200)]
    sides = [v.shape[0] for v in views]
    assert min(sides) >= round(64 * 0.8) and max(sides) <= 64
    assert all(v.dtype == np.uint8 and v.shape[2] == 3 for v in views)
    boxed = [v for v in views if (v == 0).all(axis=2).any()]
    assert 0.4 < len(boxed) / len(views) < 0.72  # a zeroed box in about 0.7 * 0.8 of the views
    assert any(0.02 <= (v == 0).all(axis=2).mean() <= 0.26 for v in boxed)


def test_perturbations_and_recall():
    img = Image.fromarray(np.random.default_rng(0).integers(1, 256, size=(50, 80, 3), dtype=np.uint8))
    from heterag.evaluation.images import perturb  # the benchmark's perturbations, shared with training's validation

    masked = np.asarray(perturb(img, "mask", rng=np.random.default_rng(0)))
    assert masked.shape == (50, 80, 3) and abs((masked == 0).all(axis=2).mean() - 0.2) < 0.02
    assert perturb(img, "crop90", rng=np.random.default_rng(0)).size == (72, 45)
    assert perturb(img, "jpeg50", rng=np.random.default_rng(0)).size == (80, 50)
    with pytest.raises(InvalidInputError):
        perturb(img, "blur", rng=np.random.default_rng(0))
    keys = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [1, 0.5, 0], [0, 0.1, 1]], dtype=np.float32)
    assert recall_at(queries, keys, 1) == pytest.approx(2 / 3)
    assert recall_at(queries, keys, 2) == pytest.approx(1.0)
    constant = np.ones((4, 3), dtype=np.float32)  # a collapsed encoder: every key ties
    assert recall_at(constant, constant, 1) == 0.0 and recall_at(constant, constant, 4) == 1.0


def test_losses_reward_alignment():
    g = torch.Generator().manual_seed(0)
    txt = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
    same = torch.eye(6, dtype=torch.bool)
    scale = torch.tensor(10.0)
    noisy = torch.nn.functional.normalize(txt + 2 * torch.randn(6, 16, generator=g), dim=-1)
    assert lit_loss(txt, txt, same, scale) < lit_loss(noisy, txt, same, scale)
    # identical captions are positives of each other: swapping their images costs nothing
    same2 = same.clone()
    same2[0, 1] = same2[1, 0] = True
    txt2 = txt.clone()
    txt2[1] = txt2[0]
    swapped = txt2[[1, 0, 2, 3, 4, 5]]
    assert lit_loss(swapped, txt2, same2, scale) == pytest.approx(float(lit_loss(txt2, txt2, same2, scale)))
    pairs = torch.cat([txt, txt])
    assert instance_loss(pairs, scale) < instance_loss(torch.cat([txt, noisy]), scale)


def test_config_validation():
    with pytest.raises(InvalidInputError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(InvalidInputError, match="store_size"):
        TrainConfig(image_size=96, store_size=64)
    with pytest.raises(InvalidInputError, match="at least 2 images"):
        build_training_data(TrainConfig(synthetic=1, **TINY))


def test_cli_arguments_and_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.synthetic, defaults.seed, defaults.folder) == (20000, 0, [])
    args = parser.parse_args(["--synthetic", "8", "--procedural", "0", "--epochs", "1", "--batch-size", "4",
                              "--max-steps", "1", "--validation-scenes", "0", "--threads", "1", "--out", str(tmp_path)])
    assert run_train(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["weights"] == str(tmp_path / DEFAULT_WEIGHTS)
    meta = json.loads((tmp_path / DEFAULT_CONFIG).read_text())
    command = meta["training"]["command"]
    assert command.startswith("heterag train-image-encoder --synthetic 8 --procedural 0 --epochs 1 --batch-size 4")
    assert "--max-steps 1" in command and command.endswith(f"--out {tmp_path}")
    assert parser.parse_args(command.split()[2:]) == args  # the recorded command parses back to the same run
