"""FID, KID, Inception Score and precision/recall from Inception features.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64. The
  trace of (S1 S2)^(1/2) is computed as sum(sqrt(eig(S1^(1/2) S2 S1^(1/2)))), a symmetric PSD
  matrix with the same eigenvalues as S1 S2, via eigh (runs on GPU too), instead of scipy's
  sqrtm (Schur form, CPU only) used by pytorch-fid; both agree (tests/test_fid.py).
- KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3 over random subsets,
  mean and std, drawn in torch-fidelity's order with its default seed 2020.
- IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over 10 contiguous splits of the
  softmax of the unbiased 1008-way logits, as the original code and torch-fidelity.
- Precision/recall (Kynkaanniemi et al. 2019): k-NN (k=3) balls around the real and the generated
  features; precision = share of generated samples inside some real ball, recall = share of real
  samples inside some generated ball.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


class FeatureStats:
    """Running mean and covariance (ddof=1, as np.cov) of [n, d] feature batches, in float64.

    Accumulates sums of x - shift (shift = the first batch's mean), so large means do not
    cancel digits in the covariance."""

    def __init__(self):
        self.num = 0
        self._shift = self._sum = self._outer = None

    def update(self, features: np.ndarray) -> None:
        """features: [n, d] (any float dtype; converted to float64)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"features must be [n, d] with n >= 1; got shape {x.shape}")
        if self._shift is None:
            self._shift = x.mean(axis=0)
            d = x.shape[1]
            self._sum, self._outer = np.zeros(d), np.zeros((d, d))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(
                f"features have dimension {x.shape[1]}, earlier ones {self._shift.shape[0]}"
            )
        centered = x - self._shift
        self.num += x.shape[0]
        self._sum += centered.sum(axis=0)
        self._outer += centered.T @ centered

    @property
    def mu(self) -> np.ndarray:
        """[d] float64 mean."""
        self._require(1)
        return self._shift + self._sum / self.num

    @property
    def sigma(self) -> np.ndarray:
        """[d, d] float64 covariance with ddof=1."""
        self._require(2)
        mean = self._sum / self.num
        return (self._outer - self.num * np.outer(mean, mean)) / (self.num - 1)

    def _require(self, n: int) -> None:
        if self.num < n:
            raise ValueError(f"statistics need at least {n} feature vectors; have {self.num}")


def _check_stats(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"statistics do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}; need mu [d] and sigma [d, d]"
        )
    return mu1, sigma1, mu2, sigma2


def _sqrt_psd(sigma):
    """Symmetric square root of a PSD matrix via eigh (negative round-off eigenvalues -> 0)."""
    sigma = (sigma + sigma.T) / 2
    evals, evecs = jnp.linalg.eigh(sigma)
    return (evecs * jnp.sqrt(jnp.clip(evals, 0.0))) @ evecs.T


class FrechetReference:
    """N(mu, sigma) of a reference set, its matrix square root computed once: `distance(mu,
    sigma)` is the Frechet distance of another Gaussian to it with one eigendecomposition.

    mu: [d], sigma: [d, d]; all in float64."""

    def __init__(self, mu, sigma):
        self.mu, self.sigma, _, _ = _check_stats(mu, sigma, mu, sigma)
        with jax.enable_x64(True):
            self._root = _sqrt_psd(jnp.asarray(self.sigma))

    def distance(self, mu, sigma) -> float:
        """||mu_ref - mu||^2 + tr(S_ref) + tr(S) - 2 tr((S_ref^(1/2) S S_ref^(1/2))^(1/2))."""
        mu_ref, sigma_ref, mu, sigma = _check_stats(self.mu, self.sigma, mu, sigma)
        with jax.enable_x64(True):
            s2 = jnp.asarray(sigma)
            middle = self._root @ ((s2 + s2.T) / 2) @ self._root
            evals = jnp.linalg.eigvalsh((middle + middle.T) / 2)
            tr_covmean = jnp.sum(jnp.sqrt(jnp.clip(evals, 0.0)))
            diff = mu_ref - mu
            fid = diff @ diff + np.trace(sigma_ref) + jnp.trace(s2) - 2.0 * tr_covmean
            return float(fid)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2); mu: [d], sigma: [d, d]. float64."""
    return FrechetReference(mu1, sigma1).distance(mu2, sigma2)


def _mmd2_unbiased(f1, f2):
    """Unbiased MMD^2 of two [m, d] samples, kernel (x.y / d + 1)^3; float64."""
    m, d = f1.shape
    kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    k11, k22, k12 = kernel(f1, f1), kernel(f2, f2), kernel(f1, f2)
    off_diag = (k11.sum() - jnp.trace(k11) + k22.sum() - jnp.trace(k22)) / (m * (m - 1))
    return off_diag - 2.0 * k12.sum() / (m * m)


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> dict[str, float]:
    """KID of [n1, d] and [n2, d] features: mean and std (ddof=0) over `num_subsets` subsets.

    Each subset draws `subset_size` rows without replacement from features1, then from features2
    (np.random.RandomState(seed), as torch-fidelity). subset_size is capped at min(n1, n2)
    (clean-fid's rule; torch-fidelity refuses instead); the size used is returned."""
    f1, f2 = np.asarray(features1), np.asarray(features2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID needs [n, d] features of equal d; got {f1.shape} and {f2.shape}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2 or num_subsets < 1:
        raise ValueError(
            f"KID needs >= 2 samples per set and >= 1 subset; got sets of {len(f1)} "
            f"and {len(f2)}, num_subsets={num_subsets}"
        )
    rng = np.random.RandomState(seed)
    mmds = np.zeros(num_subsets)
    with jax.enable_x64(True):
        mmd = jax.jit(_mmd2_unbiased)
        for i in range(num_subsets):
            a = f1[rng.choice(len(f1), m, replace=False)].astype(np.float64)
            b = f2[rng.choice(len(f2), m, replace=False)].astype(np.float64)
            mmds[i] = float(mmd(a, b))
    return {
        "kid_mean": float(mmds.mean()),
        "kid_std": float(mmds.std()),
        "kid_subset_size": m,
        "kid_subsets": num_subsets,
    }


def inception_score(logits: np.ndarray, num_splits: int = 10) -> dict[str, float]:
    """IS of [n, 1008] unbiased logits: mean and std (ddof=0) over contiguous splits; float64."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < num_splits or num_splits < 1:
        raise ValueError(
            f"inception_score needs [n, classes] logits with n >= num_splits="
            f"{num_splits}; got shape {logits.shape}"
        )
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    n = len(logits)
    for k in range(num_splits):
        part = log_p[k * n // num_splits : (k + 1) * n // num_splits]
        p = np.exp(part)
        with np.errstate(divide="ignore"):  # classes no image predicts: p = 0, 0 log 0 = 0
            log_marginal = np.log(p.mean(axis=0))
        kl = (p * np.where(p > 0, part - log_marginal, 0.0)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores))}


@jax.jit
def _sq_distances(a, b):
    """Squared Euclidean distances [n, m] of rows of a [n, d] and b [m, d], float32, >= 0."""
    hi = jax.lax.Precision.HIGHEST
    aa, bb = jnp.sum(a * a, axis=1), jnp.sum(b * b, axis=1)
    return jnp.maximum(aa[:, None] - 2.0 * jnp.dot(a, b.T, precision=hi) + bb[None, :], 0.0)


@partial(jax.jit, static_argnums=2)
def _kth_distance(rows, manifold, k: int):
    """[b] (k+1)-th smallest squared distance of each row to the manifold (the row itself, at
    distance 0, is the first)."""
    return -jax.lax.top_k(-_sq_distances(rows, manifold), k + 1)[0][:, k]


@jax.jit
def _inside(rows, centres, radii):
    return jnp.any(_sq_distances(rows, centres) <= radii[None, :], axis=1)


def _row_blocks(x: np.ndarray, block: int):
    block = max(1, min(block, len(x)))
    for start in range(0, len(x), block):
        part = x[start : start + block]
        yield len(part), np.pad(part, ((0, block - len(part)), (0, 0)))


def knn_radii(manifold: np.ndarray, k: int = 3, block: int = 1000) -> np.ndarray:
    """[n] squared distance from each row of manifold [n, d] to its k-th nearest other row."""
    if len(manifold) <= k:
        raise ValueError(
            f"k={k} nearest neighbours need more than {k} samples; got {len(manifold)}"
        )
    manifold = np.asarray(manifold, np.float32)
    on_device = jnp.asarray(manifold)
    out = [
        np.asarray(_kth_distance(rows, on_device, k))[:n]
        for n, rows in _row_blocks(manifold, block)
    ]
    return np.concatenate(out)


def inside_balls(
    probes: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int = 1000
) -> np.ndarray:
    """[p] bool: whether each probe row lies within radii[j] (squared) of some centre j."""
    centres, radii = jnp.asarray(centres, jnp.float32), jnp.asarray(radii, jnp.float32)
    out = [
        np.asarray(_inside(rows, centres, radii))[:n]
        for n, rows in _row_blocks(np.asarray(probes, np.float32), block)
    ]
    return np.concatenate(out)


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 1000
) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of [n, d] real and [m, d]
    generated features with k-NN balls (k=3 in the paper)."""
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    precision = inside_balls(fake, real, knn_radii(real, k, block), block).mean()
    recall = inside_balls(real, fake, knn_radii(fake, k, block), block).mean()
    return {"precision": float(precision), "recall": float(recall)}


@jax.jit
def _nearest(rows, manifold):
    """[b] smallest squared distance of each row to the manifold."""
    return jnp.min(_sq_distances(rows, manifold), axis=1)


def nearest_distances(probes: np.ndarray, manifold: np.ndarray, block: int = 1000) -> np.ndarray:
    """[p] Euclidean distance from each row of probes [p, d] to its nearest row of manifold."""
    on_device = jnp.asarray(manifold, jnp.float32)
    out = [np.asarray(_nearest(rows, on_device))[:n]
           for n, rows in _row_blocks(np.asarray(probes, np.float32), block)]
    return np.sqrt(np.concatenate(out))


def copy_rate(train: np.ndarray, samples: np.ndarray, percentile: float = 5.0,
              block: int = 1000) -> dict[str, float]:
    """The share of samples [m, d] closer (Euclidean, e.g. flattened pixels) to their nearest
    training row than `percentile` % of the training rows [n, d] are to their nearest other
    training row: near-copies of the training set. A model that memorises scores 1, one that
    samples the data distribution itself about percentile / 100."""
    if not 0 < percentile < 100:
        raise ValueError(f"percentile={percentile} must lie in (0, 100)")
    train = np.asarray(train, np.float32)
    threshold = float(np.percentile(np.sqrt(knn_radii(train, 1, block)), percentile))
    nearest = nearest_distances(samples, train, block)
    return {"copy_rate": float(np.mean(nearest < threshold)), "copy_threshold": threshold,
            "nn_distance_median": float(np.median(nearest))}
