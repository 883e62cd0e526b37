"""Feature statistics, the Frechet distance (FVD, FAD) and the kernel distance (KVD).

Everything is computed in float64 on the CPU, whatever the features' dtype or device.

Frechet distance between the Gaussians N(mu1, C1) and N(mu2, C2) fitted to two feature sets
(Heusel et al. 2017; Unterthiner et al. 2018 for FVD; Kilgour et al. 2019 for FAD)::

    d^2 = ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr( (C1^1/2 C2 C1^1/2)^1/2 )

``tr((C1 C2)^1/2)`` equals ``tr((C1^1/2 C2 C1^1/2)^1/2)`` (similar matrices), and the latter
is the square root of a symmetric positive semi-definite matrix, so both square roots come
from symmetric eigen-decompositions (``eigh``), with round-off negatives clamped to 0 --
no complex parts to discard as with ``scipy.linalg.sqrtm(C1 @ C2)``.
Covariances are unbiased (divided by N - 1), as in the FVD code of VideoGPT / TATS /
MM-Diffusion.

Kernel distance (KVD; the KID of Binkowski et al. 2018 on video features, as in TATS,
StyleGAN-V and MM-Diffusion): the unbiased estimate of the squared maximum mean discrepancy
with the cubic polynomial kernel ``k(x, y) = (x . y / d + 1)^3`` (d = feature dimension;
sklearn's ``polynomial_kernel`` defaults, used by MM-Diffusion's evaluator)::

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
              - 2/(mn) sum_{i, j} k(x_i, y_j)

It is 0 in expectation for two samples of one distribution, so estimates can be slightly
negative.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_float64(x: Any) -> np.ndarray:
    """numpy array or torch tensor (any dtype / device) -> float64 numpy array."""
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here)
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_matrix(features: Any, name: str = "features") -> np.ndarray:
    arr = _as_float64(features)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


class FeatureStats:
    """Streaming mean and covariance of feature vectors, in float64.

    Holds the count N, the mean and the centred sum of outer products
    ``M2 = sum_i (x_i - mean)(x_i - mean)^T``. Batches are merged with the parallel update of
    Chan, Golub & LeVeque (1979)::

        delta = mean_b - mean;  N' = N + N_b;  mean' = mean + delta N_b / N'
        M2' = M2 + M2_b + delta delta^T N N_b / N'

    which equals accumulating ``sum x`` and ``sum x x^T`` (``sum`` and ``sum_outer`` below) but
    avoids their cancellation when the mean is large compared with the spread.

    Args:
        dim: D; taken from the first batch when None.
        keep: keep up to this many raw feature vectors (for the kernel distance, which needs
            samples). Once more than ``keep`` have been seen, a uniform random subset is kept
            (reservoir sampling, seeded). 0 keeps none.
        seed: seed of the reservoir sampling.
    """

    def __init__(self, dim: int | None = None, *, keep: int = 0, seed: int = 0) -> None:
        self.dim = dim
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self.keep = int(keep)
        self._rng = np.random.default_rng(seed)
        self._kept: list[np.ndarray] = []  # rows of the reservoir
        self._kept_array: np.ndarray | None = None

    # -- accumulation --------------------------------------------------------------------------

    def _init(self, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
        if dim != self.dim:
            raise ValueError(f"FeatureStats: features of dimension {dim}, expected {self.dim}")
        if self._mean is None:
            self._mean = np.zeros(dim)
            self._m2 = np.zeros((dim, dim))

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        assert self._mean is not None and self._m2 is not None
        if count == 0:
            return
        total = self.count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.count * count / total)
        self.count = total

    def update(self, features: Any) -> FeatureStats:
        """Add a batch: float ``[N, D]`` (numpy or torch, any dtype and device)."""
        x = _as_matrix(features)
        self._init(x.shape[1])
        if len(x) == 0:
            return self
        mean = x.mean(axis=0)
        centred = x - mean
        seen_before = self.count
        self._combine(len(x), mean, centred.T @ centred)
        self._reservoir(x, seen_before)
        return self

    def _reservoir(self, x: np.ndarray, seen_before: int) -> None:
        """Algorithm R (Vitter 1985): item t (0-based) replaces a random slot w.p. keep/(t+1)."""
        if self.keep <= 0:
            return
        self._kept_array = None
        for offset, row in enumerate(x):
            t = seen_before + offset
            if len(self._kept) < self.keep:
                self._kept.append(row.copy())
            else:
                slot = int(self._rng.integers(0, t + 1))
                if slot < self.keep:
                    self._kept[slot] = row.copy()

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another FeatureStats' samples to this one (in place; returns self).

        Kept raw features are pooled and, beyond ``keep``, subsampled uniformly.
        """
        if other.count == 0:
            return self
        assert other._mean is not None and other._m2 is not None
        self._init(other._mean.shape[0])
        seen_before = self.count
        self._combine(other.count, other._mean, other._m2)
        if self.keep > 0 and other._kept:
            self._reservoir(np.stack(other._kept), seen_before)
        return self

    # -- results -------------------------------------------------------------------------------

    def _require(self, least: int) -> None:
        if self.count < least:
            raise ValueError(f"FeatureStats: needs at least {least} samples, has {self.count}")

    @property
    def mean(self) -> np.ndarray:
        """float64 ``[D]``."""
        self._require(1)
        assert self._mean is not None
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance ``M2 / (N - 1)``, float64 ``[D, D]``."""
        self._require(2)
        assert self._m2 is not None
        m2 = 0.5 * (self._m2 + self._m2.T)  # exactly symmetric
        return m2 / (self.count - 1)

    @property
    def sum(self) -> np.ndarray:
        """``sum_i x_i``, float64 ``[D]``."""
        return self.mean * self.count

    @property
    def sum_outer(self) -> np.ndarray:
        """``sum_i x_i x_i^T``, float64 ``[D, D]``."""
        self._require(1)
        assert self._m2 is not None
        return self._m2 + self.count * np.outer(self.mean, self.mean)

    @property
    def samples(self) -> np.ndarray:
        """The kept raw features, float64 ``[min(N, keep), D]`` (empty when keep = 0)."""
        if self._kept_array is None:
            dim = self.dim or 0
            self._kept_array = np.stack(self._kept) if self._kept else np.zeros((0, dim))
        return self._kept_array

    def frechet_distance(self, other: FeatureStats) -> float:
        """Frechet distance between the Gaussians fitted to this and another set."""
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)

    def __repr__(self) -> str:
        return f"FeatureStats(count={self.count}, dim={self.dim}, kept={len(self._kept)})"


def sqrtm_psd(matrix: Any) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (float64).

    ``A = V diag(w) V^T`` (``numpy.linalg.eigh`` of the symmetrised matrix);
    ``sqrt(A) = V diag(sqrt(max(w, 0))) V^T``: eigenvalues that round-off made slightly
    negative are clamped to 0.
    """
    a = _as_float64(matrix)
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(cov1: Any, cov2: Any) -> float:
    """``tr((C1 C2)^1/2) = tr((C1^1/2 C2 C1^1/2)^1/2)`` = sum of sqrt of the eigenvalues of the
    PSD matrix ``C1^1/2 C2 C1^1/2`` (negatives from round-off clamped to 0)."""
    root = sqrtm_psd(cov1)
    inner = root @ _as_float64(cov2) @ root
    eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Frechet distance ``||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2)``.

    Args:
        mu1, mu2: means ``[D]``; cov1, cov2: covariances ``[D, D]`` (numpy or torch).

    Returns:
        The squared distance (a float >= 0; a result below 0 can only come from round-off and
        is returned as 0).
    """
    m1, m2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    c1, c2 = _as_float64(cov1), _as_float64(cov2)
    d = m1.shape[0]
    for name, value, shape in (("mu2", m2, (d,)), ("cov1", c1, (d, d)), ("cov2", c2, (d, d))):
        if value.shape != shape:
            raise ValueError(f"frechet_distance: {name} has shape {value.shape}, expected {shape}")
    diff = m1 - m2
    value = float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * trace_sqrt_product(c1, c2))
    return max(value, 0.0)


def frechet_distance_of(x: Any, y: Any) -> float:
    """Frechet distance between two feature sets ``[N, D]`` and ``[M, D]`` (N, M >= 2)."""
    return FeatureStats().update(x).frechet_distance(FeatureStats().update(y))


def polynomial_kernel(x: Any, y: Any, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``k(x_i, y_j) = (x_i . y_j / d + coef0)^degree``, float64 ``[N, M]`` for ``[N, D]``,
    ``[M, D]`` inputs (sklearn's ``polynomial_kernel`` with gamma = 1 / d)."""
    a, b = _as_matrix(x, "x"), _as_matrix(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"polynomial_kernel: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    return (a @ b.T / a.shape[1] + coef0) ** degree


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sum_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    sum_yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * kxy.mean())


def kernel_distance(
    x: Any,
    y: Any,
    *,
    num_subsets: int | None = None,
    subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (KVD / KID), see the module docstring.

    Args:
        x, y: feature sets ``[M, D]`` and ``[N, D]`` (M, N >= 2).
        num_subsets: None computes it on the full sets (as MM-Diffusion's evaluator); a number
            averages it over that many random subsets of ``min(M, N, subset_size)`` samples
            per side, drawn without replacement (as StyleGAN-V / StyleGAN2-ADA's KID).
        seed: seed of the subset draws.
    """
    a, b = _as_matrix(x, "x"), _as_matrix(y, "y")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"kernel_distance needs >= 2 samples per side, got {len(a)} and {len(b)}")
    if num_subsets is None:
        return _mmd2_unbiased(a, b)
    rng = np.random.default_rng(seed)
    size = max(2, min(len(a), len(b), subset_size))
    values = [
        _mmd2_unbiased(
            a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values))
