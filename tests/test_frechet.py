"""Frechet distance, streaming feature statistics and the polynomial kernel distance."""

import numpy as np
import pytest
import torch

from mmldm.metrics.frechet import (
    FeatureStats,
    frechet_distance,
    frechet_distance_of,
    kernel_distance,
    polynomial_kernel,
    sqrtm_psd,
)


def reference_frechet(mu1, cov1, mu2, cov2) -> float:
    """Independent float64 reference: tr((C1 C2)^1/2) from the eigenvalues of C1 C2, which are
    real and >= 0 for PSD matrices (C1 C2 is similar to C1^1/2 C2 C1^1/2)."""
    eig = np.linalg.eigvals(cov1 @ cov2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + 0.1 * np.eye(d)


def test_frechet_of_diagonal_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_of_identical_gaussians_is_the_mean_distance():
    rng = np.random.default_rng(1)
    cov = random_cov(rng, 8)
    mu = rng.standard_normal(8)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-10)
    shift = np.full(8, 0.5)
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(8 * 0.25, rel=1e-9)


def test_frechet_of_a_set_with_itself_is_zero_even_rank_deficient():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 64)) * 5 + 3  # 10 samples in 64-d: covariance of rank 9
    assert frechet_distance_of(x, x) == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(x.T)))


def test_frechet_agrees_with_an_independent_float64_reference():
    rng = np.random.default_rng(3)
    for d in (4, 32, 128):
        x = rng.standard_normal((3 * d, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
        y = rng.standard_normal((2 * d, d)) * rng.uniform(0.5, 2, d) + 0.3
        mu1, mu2 = x.mean(0), y.mean(0)
        c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        expected = reference_frechet(mu1, c1, mu2, c2)
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-6)
        assert frechet_distance_of(x, y) == pytest.approx(expected, rel=1e-6)
        # torch input of another dtype gives the same (computed in float64)
        assert frechet_distance(
            torch.from_numpy(mu1), torch.from_numpy(c1), mu2, c2
        ) == pytest.approx(expected, rel=1e-12)


def test_sqrtm_psd_squares_back_and_clamps_round_off():
    rng = np.random.default_rng(4)
    a = random_cov(rng, 12, rank=5) - 0.1 * np.eye(12)  # rank 5: seven ~0 eigenvalues
    root = sqrtm_psd(a)
    assert np.allclose(root @ root, a, atol=1e-10)
    assert np.isfinite(root).all()


def test_streaming_stats_equal_the_one_shot_mean_and_covariance():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((101, 7)) * 3 + 1000.0  # a large mean: cancellation would show
    x32 = x.copy()
    x32[:40] = x[:40].astype(np.float32)  # the rows passed as a float32 tensor
    stats = FeatureStats()
    stats.update(torch.from_numpy(x[:1]).float()).update(torch.from_numpy(x[1:40]).float())
    stats.update(x[40:41]).update(x[41:])
    assert stats.count == 101
    assert np.allclose(stats.mean, x32.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(stats.cov, np.cov(x32, rowvar=False), rtol=1e-10, atol=1e-10)
    assert np.allclose(stats.sum, x32.sum(0), rtol=1e-12)
    assert np.allclose(stats.sum_outer, x32.T @ x32, rtol=1e-12)

    a, b = FeatureStats().update(x32[:50]), FeatureStats().update(x32[50:])
    merged = a.merge(b)
    assert np.allclose(merged.cov, np.cov(x32, rowvar=False), rtol=1e-10, atol=1e-10)


def test_stats_keep_a_bounded_reservoir_of_samples():
    x = np.arange(300, dtype=float).reshape(100, 3)
    all_kept = FeatureStats(keep=200).update(x[:60]).update(x[60:])
    assert np.array_equal(all_kept.samples, x)
    some = FeatureStats(keep=10, seed=1)
    for row in x:
        some.update(row[None])
    assert some.samples.shape == (10, 3)
    assert {tuple(r) for r in some.samples} <= {tuple(r) for r in x}
    assert FeatureStats().update(x).samples.shape == (0, 3)


def test_stats_reject_bad_input():
    stats = FeatureStats().update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="dimension 5"):
        stats.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStats().update(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStats().update(np.zeros((1, 3))).cov


def test_polynomial_kernel_on_hand_computed_values():
    x = np.array([[1.0, 2.0], [0.0, -1.0]])
    y = np.array([[3.0, 1.0]])
    # d = 2: (x.y / 2 + 1)^3 -> [(5/2 + 1)^3, (-1/2 + 1)^3] = [42.875, 0.125]
    assert np.allclose(polynomial_kernel(x, y), [[42.875], [0.125]])
    assert polynomial_kernel(x, x)[0, 0] == pytest.approx((5 / 2 + 1) ** 3)


def test_kernel_distance_matches_the_unbiased_formula_on_a_tiny_example():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.0, 2.0]])
    k = lambda a, b: (a @ b / 2 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
    yy = sum(k(y[i], y[j]) for i in range(2) for j in range(2) if i != j) / 2
    xy = sum(k(a, b) for a in x for b in y) / 6
    assert kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kernel_distance_is_near_zero_for_one_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same = kernel_distance(x, y)
    shifted = kernel_distance(x, y + 1.0)
    assert abs(same) < 0.02
    assert shifted > 0.5 and shifted > 50 * abs(same)
    subsets = kernel_distance(x, y + 1.0, num_subsets=20, subset_size=100, seed=0)
    assert subsets == pytest.approx(shifted, rel=0.3)
