"""Posterior sampling for linear inverse problems (samplers.measurement) on Gaussian data, where
p(x0 | y) is Gaussian in closed form: PiGDM, exact there, matches it; DPS shows its known bias
(it takes Cov[x0 | x_t] = 0), which fades as the observation noise grows against the prior's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers
from diffjax.core import schedules
from diffjax.samplers.measurement import Operator, posterior_denoiser
from diffjax.samplers.prediction import Prediction

SHAPE = (4, 4, 1)
DIMS = 16
S = 0.5  # the data are N(MU, S^2 I): sigma_data = S
MU = np.random.default_rng(0).normal(0.0, 0.3, SHAPE).astype(np.float32)
N = 2000
SAMPLER, SCHEDULE, SPACING = "heun", "edm", "karras"


def exact_posterior(a: np.ndarray, y: np.ndarray, sigma_y: float):
    """Mean [N, D] and covariance [D, D] of x0 | y for x0 ~ N(MU, S^2 I), y = A x0 + sigma_y n."""
    precision = np.eye(DIMS) / S ** 2 + a.T @ a / sigma_y ** 2
    cov = np.linalg.inv(precision)
    mean = (MU.reshape(-1) / S ** 2 + y @ a / sigma_y ** 2) @ cov
    return mean, cov


def _matrix(op: Operator) -> np.ndarray:
    basis = jnp.eye(DIMS).reshape(DIMS, *SHAPE)
    return np.asarray(op.forward(basis)).reshape(DIMS, -1).T


def _sample(method, op, sigma_y, num_steps=64, dps_scale=1.0):
    schedule = schedules.make_schedule(SCHEDULE)
    mu = jnp.asarray(MU)

    def exact(x_t, t):  # E[x0 | x_t] of the Gaussian data, in the x0 parameterization
        s2 = ((schedule.sigma(t) / schedule.alpha(t)) ** 2)[:, None, None, None]
        alpha = schedule.alpha(t)[:, None, None, None]
        return mu + S ** 2 / (S ** 2 + s2) * (x_t / alpha - mu)

    rng = np.random.default_rng(1)
    x0 = MU + S * rng.normal(size=(N, *SHAPE)).astype(np.float32)
    y = np.asarray(op.forward(jnp.asarray(x0)))
    y = y + sigma_y * rng.normal(size=y.shape).astype(np.float32)
    den = posterior_denoiser(Prediction(exact, schedule, "x0"), jnp.asarray(y), op, sigma_y,
                             method, sigma_data=S, dps_scale=dps_scale)
    noise = jax.random.normal(jax.random.key(2), (N, *SHAPE))
    x, _ = jax.jit(lambda n: samplers.sample(den, schedule, "x0", n, jax.random.key(3),
                                             sampler=SAMPLER, num_steps=num_steps,
                                             spacing=SPACING))(noise)
    return np.asarray(x).reshape(N, DIMS), y.reshape(N, -1)


def _errors(x, y, op, sigma_y):
    """Samples x [N, D] against the exact posterior of each y: (the largest |mean error| in
    standard errors over the D dims, the sampled / exact total variance, the same within the
    observed subspace, the row space of A)."""
    a = _matrix(op)
    mean, cov = exact_posterior(a, y, sigma_y)
    resid = x - mean
    z = np.abs(resid.mean(0)) / np.sqrt(np.diag(cov) / N)
    rows = a.T @ np.linalg.pinv(a.T)  # the projector onto A's row space
    observed = resid @ rows
    return (z.max(), np.trace(np.cov(resid.T)) / np.trace(cov),
            np.trace(np.cov(observed.T)) / np.trace(rows @ cov @ rows))


@pytest.mark.parametrize("op", [Operator("box_downsample", 2), Operator("identity")])
def test_pigdm_samples_the_exact_posterior_of_gaussian_data(op):
    """With the exact denoiser, PiGDM's p(x0 | x_t) is exact, so Heun's 64 steps sample
    p(x0 | y) up to discretization: the mean within 4 standard errors in each of the 16 dims,
    the variance within 5% (the trace's sampling error at N = 2000 is 1.6-3%)."""
    x, y = _sample("pigdm", op, sigma_y=0.1)
    z, total, observed = _errors(x, y, op, 0.1)
    assert z < 4.0
    assert abs(total - 1) < 0.05 and abs(observed - 1) < 0.06


def test_dps_is_biased_and_its_bias_fades_as_the_observation_noise_grows():
    """DPS takes p(y | x_t) = p(y | x0 = D(x_t)), too confident while Cov[x0 | x_t] is large
    against sigma_y^2: its samples collapse in the observed directions at sigma_y = 0.05 (PiGDM
    holds the variance there, see above), much less at sigma_y = 0.5."""
    op = Operator("box_downsample", 2)
    _, _, small = _errors(*_sample("dps", op, sigma_y=0.05), op, 0.05)
    _, _, large = _errors(*_sample("dps", op, sigma_y=0.5), op, 0.5)
    assert small < 0.5
    assert abs(large - 1) < abs(small - 1) / 4
def test_operators_are_what_they_claim_and_bad_input_is_refused():
    op = Operator("box_downsample", 2)
    a = _matrix(op)
    np.testing.assert_allclose(a @ a.T, op.gram * np.eye(4), atol=1e-7)
    y = np.random.default_rng(4).normal(size=(3, 2, 2, 1)).astype(np.float32)
    x = np.random.default_rng(5).normal(size=(3, *SHAPE)).astype(np.float32)
    # <A x, y> = <x, A^T y>
    np.testing.assert_allclose(np.sum(np.asarray(op.forward(jnp.asarray(x))) * y),
                               np.sum(x * np.asarray(op.adjoint(jnp.asarray(y)))), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(op.forward(op.pseudo_inverse(jnp.asarray(y)))), y,
                               atol=1e-6)
    with pytest.raises(ValueError, match="'blur' is unknown; allowed: identity, box_downsample"):
        Operator("blur")
    with pytest.raises(ValueError, match="factor 3 must divide the image side"):
        Operator("box_downsample", 3).check((1, 4, 4, 1))
