"""Image encoders: one interface for the shipped default CNN and open_clip models (random-init small
archs here, since no weights can be downloaded), differentiable preprocessing that matches open_clip's
own transform, safe local checkpoints, and the default encoder's behaviour on synthetic scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from corpora.synthetic_scenes import generate_scenes
from heterag.core.errors import InvalidInputError, UnknownNameError
from heterag.core.images import ImageRef
from heterag.encoding.image_encoders import (
    DEFAULT_CONFIG,
    DEFAULT_WEIGHTS,
    IMAGE_ENCODERS,
    WEIGHTS_DIR,
    ImageEncoder,
    OpenClipImageEncoder,
    PreprocessConfig,
    load_image_encoder,
    preprocess_pixels,
)
from heterag.training.image_encoder import jpeg, recall_at

#: The smallest open_clip architecture (ViT-S/32 image tower, 10-layer 256-wide text tower).
SMALL_ARCH = "ViT-S-32-alt"
CLIP_SPEC = f"open_clip:{SMALL_ARCH}"


@pytest.fixture(scope="module")
def default_encoder() -> ImageEncoder:
    return load_image_encoder(None)


@pytest.fixture(scope="module")
def clip_encoder() -> ImageEncoder:
    return load_image_encoder(CLIP_SPEC)


@pytest.fixture(params=["default", "clip"])
def any_encoder(request: pytest.FixtureRequest) -> ImageEncoder:
    return request.getfixturevalue(f"{request.param}_encoder")


def _images() -> list:
    rng = np.random.default_rng(3)
    scene = next(generate_scenes(1, seed=11, size=96)).image
    wide = Image.fromarray(rng.integers(0, 256, size=(40, 150, 3), dtype=np.uint8))
    grey = Image.fromarray(rng.integers(0, 256, size=(300, 200), dtype=np.uint8), mode="L")
    return [scene, ImageRef.from_pil(wide, source="wide"), grey]


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4))


# --------------------------------------------------------------------------- interface


def test_registry_and_identities(default_encoder, clip_encoder):
    assert set(IMAGE_ENCODERS) == {"default", "open_clip"}
    assert load_image_encoder("default") is default_encoder is load_image_encoder(None)
    from heterag.encoding.image_encoders import DEFAULT_WEIGHTS, WEIGHTS_DIR, _sha256_file

    assert default_encoder.identity == f"heterag-default-image-v1:sha256-{_sha256_file(WEIGHTS_DIR / DEFAULT_WEIGHTS)[:16]}"
    assert default_encoder.text_identity == "sentence-transformers/all-MiniLM-L6-v2"
    assert (default_encoder.dim, default_encoder.image_size) == (384, 96)
    assert clip_encoder.identity == f"open_clip:{SMALL_ARCH}:random-init-seed0"
    assert clip_encoder.text_identity == clip_encoder.identity
    assert (clip_encoder.dim, clip_encoder.image_size) == (256, 224)


def test_interface_conformance(any_encoder):
    enc = any_encoder
    assert isinstance(enc, ImageEncoder)
    assert not enc.model.training
    assert not any(p.requires_grad for p in enc.model.parameters())
    images = _images()
    px = enc.pixels(images[1])
    assert px.shape == (3, 40, 150) and px.dtype == torch.float32
    assert 0.0 <= float(px.min()) and float(px.max()) <= 1.0
    assert enc.pixels(images[2]).shape == (3, 300, 200)  # greyscale becomes 3 channels, native size
    inputs = enc.preprocess(px)
    assert inputs.shape == (1, 3, enc.image_size, enc.image_size)
    assert enc.preprocess(px.unsqueeze(0).repeat(2, 1, 1, 1)).shape == (2, 3, enc.image_size, enc.image_size)

    vecs = enc.encode_images(images, batch_size=2)
    assert vecs.shape == (3, enc.dim) and vecs.dtype == np.float32 and _unit_rows(vecs)
    assert np.array_equal(vecs, enc.encode_images(images, batch_size=2))  # deterministic
    np.testing.assert_allclose(vecs, enc.encode_images(images, batch_size=3), atol=1e-5)  # batch-independent
    assert enc.encode_images([]).shape == (0, enc.dim)
    # images of different native sizes batch the same as one at a time, and as embed_pixels
    for i, img in enumerate(images):
        one = enc.encode_images([img])[0]
        np.testing.assert_allclose(vecs[i], one, atol=1e-5)
        with torch.no_grad():
            direct = enc.embed_pixels(enc.pixels(img)).numpy()[0]
        np.testing.assert_allclose(direct, one, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1], atol=1e-3)

    texts = enc.encode_texts(["a small red circle in the centre", "a chest x-ray"])
    assert texts.shape == (2, enc.dim) and texts.dtype == np.float32 and _unit_rows(texts)
    with pytest.raises(InvalidInputError):
        enc.encode_texts(["fine", "  "])


def test_default_text_side_is_the_default_text_encoder(default_encoder, encoder):
    texts = ["A large blue striped square at the top left, on a grey background."]
    np.testing.assert_allclose(default_encoder.encode_texts(texts), encoder.encode(texts), atol=1e-6)


def test_gradients_flow_to_pixels(any_encoder):
    px = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(0), requires_grad=True)
    emb = any_encoder.embed_pixels(px)
    assert emb.shape == (2, any_encoder.dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    target = torch.nn.functional.normalize(torch.randn(any_encoder.dim, generator=torch.Generator().manual_seed(1)), dim=0)
    (emb @ target).sum().backward()
    assert px.grad is not None and px.grad.shape == px.shape
    assert torch.isfinite(px.grad).all()
    assert float(px.grad.abs().sum()) > 0
    assert float((px.grad[0] != 0).float().mean()) > 0.5  # most pixels influence the embedding


def test_random_init_is_reproducible_across_loads(clip_encoder):
    again = OpenClipImageEncoder(CLIP_SPEC)  # a fresh build, not the cached one
    assert again.identity == clip_encoder.identity
    img = _images()[0]
    np.testing.assert_array_equal(again.encode_images([img]), clip_encoder.encode_images([img]))


# --------------------------------------------------------------------------- preprocessing


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocess_matches_open_clip_transform(resize_mode, interpolation):
    """The tensor pipeline equals open_clip's PIL eval transform up to resampling rounding.

    Measured (open_clip 3.3.0, torchvision 0.29): on smooth images the largest difference is
    ~0.024 in normalised units (PIL rounds to 8 bits after each separable pass; torch does not),
    the mean ~0.005. White noise, the worst case for that rounding, reaches ~0.28 on a few pixels
    with the same ~0.005 mean. Bounds below leave ~1.5x slack.
    """
    from open_clip.transform import PreprocessCfg, image_transform_v2

    ref_cfg = PreprocessCfg(size=64, interpolation=interpolation, resize_mode=resize_mode)
    reference = image_transform_v2(ref_cfg, is_train=False)
    ours = PreprocessConfig.from_open_clip(vars(ref_cfg))
    rng = np.random.default_rng(0)
    for h, w in [(300, 200), (97, 131), (64, 64), (40, 50), (700, 1000)]:
        smooth = _smooth_image(rng, h, w)
        expected = reference(smooth)
        got = preprocess_pixels(torch.from_numpy(np.asarray(smooth).copy()).permute(2, 0, 1).float() / 255, ours)[0]
        assert got.shape == expected.shape == (3, 64, 64)
        diff = (got - expected).abs()
        assert float(diff.max()) < 0.04, (h, w, float(diff.max()))
        assert float(diff.mean()) < 0.01
        noise = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        diff = (preprocess_pixels(torch.from_numpy(np.asarray(noise).copy()).permute(2, 0, 1).float() / 255, ours)[0]
                - reference(noise)).abs()
        assert float(diff.mean()) < 0.015 and float(diff.max()) < 0.45


def test_clip_preprocess_is_the_models_own_transform(clip_encoder):
    import open_clip

    _, _, val = open_clip.create_model_and_transforms(SMALL_ARCH)
    img = _smooth_image(np.random.default_rng(5), 180, 260)
    diff = (clip_encoder.preprocess(clip_encoder.pixels(img))[0] - val(img)).abs()
    assert float(diff.max()) < 0.04


def test_preprocess_rejects_bad_shapes():
    cfg = PreprocessConfig(32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(InvalidInputError):
        preprocess_pixels(torch.rand(1, 32, 32), cfg)
    with pytest.raises(InvalidInputError):
        preprocess_pixels(np.zeros((3, 8, 8)), cfg)
    with pytest.raises(InvalidInputError):
        PreprocessConfig(32, (0.5,) * 3, (0.5,) * 3, interpolation="nearest")


# --------------------------------------------------------------------------- open_clip specs


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_route(tmp_path, clip_encoder, suffix):
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in clip_encoder.model.state_dict().items()}
    state["visual.proj"] = state["visual.proj"] * -1.0  # differ from the random init we compare against
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    enc = load_image_encoder(f"{CLIP_SPEC}:{path}")
    assert enc.identity.startswith(f"open_clip:{SMALL_ARCH}:sha256-") and str(tmp_path) not in enc.identity
    img = _images()[0]
    np.testing.assert_allclose(enc.encode_images([img]), -clip_encoder.encode_images([img]), atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(["a cat"]), clip_encoder.encode_texts(["a cat"]), atol=1e-5)


class _Payload:  # a pickled object that is not a tensor: weights_only loading must refuse it
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_checkpoint_loading_never_unpickles(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Payload()}}, path)
    with pytest.raises(InvalidInputError, match="evil.pt"):
        load_image_encoder(f"{CLIP_SPEC}:{path}")
    assert "unpickled!" not in capsys.readouterr().out


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(path))
    with pytest.raises(InvalidInputError, match="does not fit"):
        load_image_encoder(f"{CLIP_SPEC}:{path}")


@pytest.mark.parametrize(
    ("spec", "error", "needle"),
    [
        ("nope", UnknownNameError, "nope"),
        ("clip:ViT-B-32", UnknownNameError, "clip:ViT-B-32"),
        ("open_clip", InvalidInputError, "open_clip"),
        ("open_clip:ViT-Q-99", InvalidInputError, "ViT-Q-99"),
        ("open_clip:ViT-B-32x", InvalidInputError, "did you mean"),
        (f"{CLIP_SPEC}:no_such_tag", InvalidInputError, "no_such_tag"),
        (f"{CLIP_SPEC}:/no/such/file.pt", InvalidInputError, "/no/such/file.pt"),
    ],
)
def test_bad_specs(spec, error, needle):
    with pytest.raises(error, match=needle.replace(".", r"\.")):
        load_image_encoder(spec)


def test_wrong_checkpoint_suffix(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(InvalidInputError, match="weights.txt"):
        load_image_encoder(f"{CLIP_SPEC}:{path}")


# --------------------------------------------------------------------------- the shipped default weights


def test_shipped_weights_are_small_safetensors_with_a_config():
    from safetensors import safe_open

    weights, config = WEIGHTS_DIR / DEFAULT_WEIGHTS, WEIGHTS_DIR / DEFAULT_CONFIG
    assert weights.stat().st_size <= 20 * 2**20
    with safe_open(str(weights), framework="pt") as f:
        assert len(list(f.keys())) > 10
    meta = json.loads(config.read_text())
    assert meta["identity"] == "heterag-default-image-v1"
    assert meta["text_encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["preprocess"]["image_size"] == 96
    for key in ("command", "config", "data", "loss_curve", "final_losses", "train_seconds"):
        assert key in meta["training"]
    assert meta["training"]["command"].startswith("heterag train-image-encoder")


def test_default_encoder_finds_jpeg_copies_and_matches_captions(default_encoder):
    """30 held-out scenes (a seed training never used). Measured with the shipped weights:
    JPEG-q50 R@1 1.0; caption->image R@1 0.97 and R@5 1.0, against chance levels of 1/30 and 5/30."""
    scenes = list(generate_scenes(30, seed=777))
    originals = [s.image for s in scenes]
    copies = [Image.fromarray(jpeg(np.asarray(im), 50)) for im in originals]
    keys = default_encoder.encode_images(originals)
    assert recall_at(default_encoder.encode_images(copies), keys, 1) >= 0.9
    texts = default_encoder.encode_texts([s.caption for s in scenes])
    assert recall_at(texts, keys, 1) >= 0.6
    assert recall_at(texts, keys, 5) >= 0.85
