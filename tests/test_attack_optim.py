"""M3Att image-side optimisation: clusters, coverage objective, free vectors, PGD, zeroth order, seeding, transfer.

Small synthetic scenes and the shipped ``default`` encoder keep the whole file under a minute on 2 cores.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from corpora.synthetic_scenes import render_scene
from heterag.core.errors import InvalidInputError
from heterag.encoding.image_encoders import image_pixels, load_image_encoder
from sandbox.attacks import (
    coverage,
    fit_free_vectors,
    group_by_size,
    measure_similarity,
    neighbour_thresholds,
    pgd,
    profile_clusters,
    require_gradients,
    seed_candidates,
    similarity_oracle,
    soft_coverage,
    zeroth_order_pgd,
)

EPS = 16 / 255


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches run single-threaded: on 2 busy cores, OpenMP workers waiting for each other made one
    PGD step on 3 images at 32 px take 0.8-1.1 s with 2 threads against 0.02-0.03 s with 1 (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def enc():
    return load_image_encoder("default")


def scenes(indices, size=48) -> torch.Tensor:
    return torch.stack([image_pixels(render_scene(i, size=size).image) for i in indices])


def embed(enc, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return enc.embed_pixels(x).numpy()


def blobs(n_blobs=8, per=20, dim=24, spread=0.35, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dim))
    x = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), per, axis=0)
    x = x + spread * rng.normal(size=x.shape) / np.sqrt(dim) * 3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- clusters


def test_profile_clusters_shapes_and_proxy_means():
    x = blobs(n_blobs=3, per=30, spread=0.1)
    c = profile_clusters(x, 3, proxy_members=5, seed=0)
    assert c.centres.shape == c.proxy_centroids.shape == (3, 24)
    assert c.labels.shape == (90,) and c.sizes.tolist() == [30, 30, 30]
    np.testing.assert_allclose(np.linalg.norm(c.proxy_centroids, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(c.centres, axis=1), 1, atol=1e-5)
    # well separated blobs are recovered exactly
    assert all(len(set(c.labels[i * 30:(i + 1) * 30])) == 1 for i in range(3))
    for k in range(3):
        members = np.flatnonzero(c.labels == k)
        nearest = members[np.argsort(-(x[members] @ c.centres[k]))[:5]]
        mean = x[nearest].mean(0)
        np.testing.assert_allclose(c.proxy_centroids[k], mean / np.linalg.norm(mean), atol=1e-5)
    everything = profile_clusters(x, 3, proxy_members=1000, seed=0)  # more than a cluster: all its members
    for k in range(3):
        mean = x[everything.labels == k].mean(0)
        np.testing.assert_allclose(everything.proxy_centroids[k], mean / np.linalg.norm(mean), atol=1e-5)
    again = profile_clusters(x, 3, proxy_members=5, seed=0)
    np.testing.assert_array_equal(again.labels, c.labels)


def test_profile_clusters_errors():
    x = blobs(n_blobs=2, per=3)
    with pytest.raises(InvalidInputError, match="n_clusters"):
        profile_clusters(x, 7)
    with pytest.raises(InvalidInputError, match="n_clusters"):
        profile_clusters(x, 0)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        profile_clusters(bad, 2)
    with pytest.raises(InvalidInputError, match="2-d"):
        profile_clusters(x[0], 1)


# --------------------------------------------------------------------------- objective and free vectors


def test_neighbour_thresholds_leave_one_out():
    q = blobs(n_blobs=4, per=5)
    sims = q @ q.T
    np.fill_diagonal(sims, -np.inf)
    ranked = -np.sort(-sims, axis=1)
    np.testing.assert_allclose(neighbour_thresholds(q), ranked[:, 0], atol=1e-6)
    np.testing.assert_allclose(neighbour_thresholds(q, k=3), ranked[:, 2], atol=1e-6)
    kb = blobs(n_blobs=4, per=5, seed=1)
    np.testing.assert_allclose(neighbour_thresholds(q, kb, k=2), -np.sort(-(q @ kb.T), axis=1)[:, 1], atol=1e-6)
    with pytest.raises(InvalidInputError, match="fewer than k'"):
        neighbour_thresholds(q[:3], k=3)


def test_coverage_is_monotone_and_soft_version_tracks_it():
    q = blobs()
    t = neighbour_thresholds(q)
    v = profile_clusters(q, 4).proxy_centroids
    counts = [coverage(v[:p], q, t) for p in range(1, 5)]
    assert counts == sorted(counts) and counts[-1] > 0
    assert coverage(q[:1], q, t) >= 1  # a copy of a query beats... at least the queries it is nearest to
    soft = soft_coverage(torch.from_numpy(v), torch.from_numpy(q), torch.from_numpy(t),
                         temperature=1e-4, max_temperature=1e-5)
    assert abs(float(soft) - counts[-1]) <= 1.0


def test_free_vectors_cover_more_than_kmeans_and_are_deterministic():
    q = blobs(n_blobs=10, per=15, dim=24, spread=0.4)
    t = neighbour_thresholds(q)
    k = 4
    clusters = profile_clusters(q, k, seed=0)
    free = fit_free_vectors(q, t, k, steps=200, seed=0)
    assert free.shape == (k, 24) and free.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(free, axis=1), 1, atol=1e-5)
    base = max(coverage(clusters.centres, q, t), coverage(clusters.proxy_centroids, q, t))
    assert coverage(free, q, t) > base
    np.testing.assert_array_equal(free, fit_free_vectors(q, t, k, steps=200, seed=0))
    with pytest.raises(InvalidInputError, match="init has"):
        fit_free_vectors(q, t, k, init=clusters.centres[:2])


# --------------------------------------------------------------------------- white-box PGD


def test_pgd_moves_images_to_targets_within_eps(enc):
    x = scenes([0, 1, 2])
    targets = embed(enc, scenes([100, 101, 102]))
    start = (embed(enc, x) * targets).sum(1)
    res = pgd(enc, x, targets, steps=30, progress=False)
    # random noise of the same budget does nothing comparable
    noise = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS).clamp(0, 1)
    noise_sim = (embed(enc, noise) * targets).sum(1)
    assert res.similarity.mean() > start.mean() + 0.3
    assert res.similarity.mean() > noise_sim.mean() + 0.3
    assert (res.similarity >= start - 1e-5).all()  # best iterate never worse than the seed
    np.testing.assert_allclose(res.history[0], start.mean(), atol=1e-4)
    assert res.history.shape == (31,) and res.history[-1] > res.history[0]
    # 8-bit result: inside the eps-ball in grey levels, same shape, re-measured
    assert res.images_uint8.shape == (3, 48, 48, 3) and res.images_uint8.dtype == np.uint8
    seed8 = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(int)
    assert np.abs(res.images_uint8.astype(int) - seed8).max() <= round(EPS * 255)
    assert ((res.adv - x).abs().max() <= EPS + 1e-6) and res.adv.min() >= 0 and res.adv.max() <= 1
    np.testing.assert_allclose(res.similarity_quantised, res.similarity, atol=0.02)
    np.testing.assert_allclose(measure_similarity(enc, res.images_uint8, targets), res.similarity_quantised, atol=1e-5)
    assert res.seconds > 0 and res.steps_per_second_per_image == pytest.approx(30 * 3 / res.seconds)
    assert all(not p.requires_grad for p in enc.model.parameters())


def test_pgd_quantisation_bound_off_grid_and_odd_eps(enc):
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))  # not on the 8-bit grid
    eps = 0.03  # 7.65 grey levels
    res = pgd(enc, x, embed(enc, torch.rand(2, 3, 24, 24)), eps=eps, alpha=2 / 255, steps=6, progress=False)
    ref = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(int)
    assert np.abs(res.images_uint8.astype(int) - ref).max() <= int(np.floor(eps * 255)) <= round(eps * 255)


def test_pgd_is_deterministic_for_a_seed(enc):
    x = scenes([3, 4], size=32)
    t = embed(enc, scenes([50, 51], size=32))
    a = pgd(enc, x, t, steps=5, random_start=True, seed=1, progress=False)
    b = pgd(enc, x, t, steps=5, random_start=True, seed=1, progress=False)
    c = pgd(enc, x, t, steps=5, random_start=True, seed=2, progress=False)
    np.testing.assert_array_equal(a.images_uint8, b.images_uint8)
    np.testing.assert_array_equal(a.history, b.history)
    assert not np.array_equal(a.images_uint8, c.images_uint8)
    one_at_a_time = pgd(enc, x, t, steps=5, random_start=True, seed=1, batch_size=1, progress=False)
    np.testing.assert_allclose(one_at_a_time.similarity, a.similarity, atol=0.05)
    assert one_at_a_time.history.shape == a.history.shape
    two = pgd(enc, x, t, steps=5, random_start=True, seed=1, threads=2, progress=False)
    assert torch.get_num_threads() == 1  # the run's thread count is restored
    np.testing.assert_allclose(two.similarity, a.similarity, atol=0.05)


class _NoGradEncoder:
    def __init__(self, inner):
        self.inner, self.identity, self.dim, self.image_size, self.model = inner, "nograd", inner.dim, 32, inner.model

    def embed_pixels(self, pixels):
        with torch.no_grad():
            return self.inner.embed_pixels(pixels)


def test_encoder_without_gradients_is_refused(enc):
    require_gradients(enc)
    with pytest.raises(InvalidInputError, match="no embed_pixels"):
        require_gradients(object())
    with pytest.raises(InvalidInputError, match="gives no gradients"):
        require_gradients(_NoGradEncoder(enc))
    with pytest.raises(InvalidInputError, match="gives no gradients"):
        pgd(_NoGradEncoder(enc), scenes([0], size=32), np.ones((1, enc.dim)), steps=1, progress=False)
    with pytest.raises(InvalidInputError, match="targets has 2 rows"):
        pgd(enc, scenes([0], size=32), np.ones((2, enc.dim)), steps=1, progress=False)


# --------------------------------------------------------------------------- black-box


def test_zeroth_order_raises_similarity_and_counts_queries(enc):
    x = scenes([7, 8], size=32)
    t = embed(enc, scenes([107, 108], size=32))
    inner = similarity_oracle(enc, t)
    seen = {"images": 0, "calls": 0, "grad": []}

    def oracle(images):
        seen["images"] += int(np.prod(images.shape[:-3]))
        seen["calls"] += 1
        seen["grad"].append(torch.is_grad_enabled())
        return inner(images)

    steps, d = 8, 6
    res = zeroth_order_pgd(oracle, x, steps=steps, directions=d, sigma=2 / 255, progress=False, seed=0)
    start = (embed(enc, x) * t).sum(1)
    assert res.similarity.mean() > start.mean() + 0.02
    assert (res.similarity >= start - 1e-5).all()
    assert res.oracle_queries == seen["images"] == 2 * (steps * (2 * d + 1) + 2)
    assert seen["calls"] == steps + 2 and not any(seen["grad"])  # one batched call per step
    ref = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(int)
    assert np.abs(res.images_uint8.astype(int) - ref).max() <= 16
    np.testing.assert_allclose(res.similarity_quantised, res.similarity, atol=0.02)
    chunked = zeroth_order_pgd(oracle, x, steps=2, directions=d, oracle_batch=4, progress=False)
    assert chunked.oracle_queries == 2 * (2 * (2 * d + 1) + 2)
    with pytest.raises(InvalidInputError, match="similarity oracle returned"):
        zeroth_order_pgd(lambda im: torch.zeros(3), x, steps=1, directions=2, progress=False)


# --------------------------------------------------------------------------- transfer


def test_transfer_from_a_surrogate_to_a_perturbed_victim(enc):
    victim = copy.deepcopy(enc)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in victim.model.parameters():
            if p.ndim > 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.15 * p.std())
    x, target_images = scenes([10, 11, 12], size=32), scenes([110, 111, 112], size=32)
    assert not np.allclose(embed(victim, x), embed(enc, x), atol=1e-2)  # really another encoder
    res = pgd(enc, x, embed(enc, target_images), steps=25, progress=False)
    victim_targets = embed(victim, target_images)
    before = measure_similarity(victim, x, victim_targets)
    after = measure_similarity(victim, res.images_uint8, victim_targets)
    assert after.mean() > before.mean() + 0.1


# --------------------------------------------------------------------------- seeding


def test_seeding_picks_an_exact_copy_and_mixed_sizes(enc):
    images = [image_pixels(render_scene(i, size=32 if i % 3 else 40).image) for i in range(8)]
    assert len(group_by_size(images)) == 2
    emb = np.stack([embed(enc, im[None])[0] for im in images])
    picked = seed_candidates(enc, images, emb, emb[[3, 6]], top=3, warmup_steps=3)
    assert picked.tolist() == [3, 6]
    # a near-copy target: the warm-up still ranks, seeds stay distinct when two targets want one image
    twice = seed_candidates(enc, images, emb, emb[[5, 5, 5]], top=2, warmup_steps=2)
    assert twice[0] == 5 and len(set(twice.tolist())) == 3


def test_seeding_budget_larger_than_pool(enc):
    images = scenes([0, 1], size=32)
    emb = embed(enc, images)
    with pytest.raises(InvalidInputError, match="poison budget K larger than candidate pool c"):
        seed_candidates(enc, images, emb, np.concatenate([emb, emb]), warmup_steps=1)


def test_pgd_on_an_open_clip_encoder_and_cross_encoder_measure(enc):
    """Another architecture and preprocessing (random-init ViT-S-32-alt: 224 px bicubic, 256-d): PGD
    still climbs, and a poison optimised on one encoder is measured on the other with its own targets."""
    vit = load_image_encoder("open_clip:ViT-S-32-alt")
    x, target_images = scenes([20, 21], size=32), scenes([120, 121], size=32)
    targets = embed(vit, target_images)
    res = pgd(vit, x, targets, steps=4, alpha=2 / 255, progress=False)
    assert res.similarity.mean() > res.history[0] + 0.01 and res.images_uint8.shape == (2, 32, 32, 3)
    other = measure_similarity(enc, res.images_uint8, embed(enc, target_images))
    assert other.shape == (2,) and np.isfinite(other).all()
    with pytest.raises(InvalidInputError, match="dimension"):
        measure_similarity(enc, res.images_uint8, targets)
