"""Posterior sampling for linear inverse problems (samplers.measurement) on Gaussian data, where
p(x0 | y) is Gaussian in closed form: PiGDM, exact there, matches it; DPS (it takes
Cov[x0 | x_t] = 0) follows its own closed-form law there, whose bias is known: a collapse of the
observed directions that its step size zeta sets and that fades as the observation noise grows."""

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
SIGMA_MAX = schedules.make_schedule(SCHEDULE).sigma_max  # where the sampler starts


def exact_posterior(a: np.ndarray, y: np.ndarray, sigma_y: float):
    """Mean [N, D] and covariance [D, D] of x0 | y for x0 ~ N(MU, S^2 I), y = A x0 + sigma_y n."""
    precision = np.eye(DIMS) / S ** 2 + a.T @ a / sigma_y ** 2
    cov = np.linalg.inv(precision)
    mean = (MU.reshape(-1) / S ** 2 + y @ a / sigma_y ** 2) @ cov
    return mean, cov


def _matrix(op: Operator) -> np.ndarray:
    basis = jnp.eye(DIMS).reshape(DIMS, *SHAPE)
    return np.asarray(op.forward(basis)).reshape(DIMS, -1).T


def _run(method, op, y, sigma_y, noise, num_steps, dps_scale):
    """The sampler's x0 [B, D] from noise [B, H, W, C] given observations y [B, ...]."""
    schedule = schedules.make_schedule(SCHEDULE)
    mu = jnp.asarray(MU)

    def exact(x_t, t):  # E[x0 | x_t] of the Gaussian data, in the x0 parameterization
        s2 = ((schedule.sigma(t) / schedule.alpha(t)) ** 2)[:, None, None, None]
        alpha = schedule.alpha(t)[:, None, None, None]
        return mu + S ** 2 / (S ** 2 + s2) * (x_t / alpha - mu)

    den = posterior_denoiser(Prediction(exact, schedule, "x0"), jnp.asarray(y), op, sigma_y,
                             method, sigma_data=S, dps_scale=dps_scale)
    x, _ = jax.jit(lambda n: samplers.sample(den, schedule, "x0", n, jax.random.key(3),
                                             sampler=SAMPLER, num_steps=num_steps,
                                             spacing=SPACING))(noise)
    return np.asarray(x).reshape(len(noise), DIMS)


def _rows(a: np.ndarray) -> np.ndarray:
    """The projector [D, D] onto A's row space, the observed subspace."""
    return a.T @ np.linalg.pinv(a.T)


def _sample(method, op, sigma_y, num_steps=64, dps_scale=1.0):
    """N posterior samples [N, D] for N observations [N, d] of N draws of the data."""
    rng = np.random.default_rng(1)
    x0 = MU + S * rng.normal(size=(N, *SHAPE)).astype(np.float32)
    y = np.asarray(op.forward(jnp.asarray(x0)))
    y = y + sigma_y * rng.normal(size=y.shape).astype(np.float32)
    noise = jax.random.normal(jax.random.key(2), (N, *SHAPE))
    return _run(method, op, y, sigma_y, noise, num_steps, dps_scale), y.reshape(N, -1)


def _errors(x, y, op, sigma_y):
    """Samples x [N, D] against the exact posterior of each y: (the largest |mean error| in
    standard errors over the D dims, the sampled / exact total variance, the same within the
    observed subspace, the row space of A)."""
    a = _matrix(op)
    mean, cov = exact_posterior(a, y, sigma_y)
    resid = x - mean
    z = np.abs(resid.mean(0)) / np.sqrt(np.diag(cov) / N)
    rows = _rows(a)
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


def dps_law(a: np.ndarray, y: np.ndarray, sigma_y: float, zeta: float, sigma_max: float):
    """Mean [N, D] and observed-subspace variance per direction of DPS's samples (probability
    flow from x = sigma_max n, D(x) of the Gaussian data, A A^T = a^2 I), in closed form.

    Along a unit row u of A, D(x) = m + k (x - m) with k = S^2 / (S^2 + sigma^2) and
    D_y = D + sigma^2 (zeta / sigma_y^2) k a (y - a D): dx/dsigma = (x - D_y) / sigma is linear.
    With v = sigma^2 / (S^2 + sigma^2), r = a^2 S^2 / sigma_y^2 and c = zeta r / 2, its flow
    from sigma_max shrinks x by t0 e^(-c v_m) (t0 = S / sqrt(S^2 + sigma_max^2), v_m = 1 - t0^2)
    and moves the mean by (zeta S^2 / sigma_y^2) (F(sqrt c) - F(t0 sqrt c) e^(-c v_m)) / sqrt c
    times a (y - a m), F being Dawson's integral. Exact posterior: gain S^2 / sigma_y^2 / (1 + r)
    and variance S^2 / (1 + r); so DPS's observed variance is S^2 e^(-zeta r) as sigma_max grows."""
    from scipy.special import dawsn

    a2 = float(np.mean(np.sum(a ** 2, axis=1)))
    r, t0 = a2 * S ** 2 / sigma_y ** 2, S / np.hypot(S, sigma_max)
    c, v_m = zeta * r / 2, 1 - t0 ** 2
    shrink = t0 * np.exp(-c * v_m)
    gain = zeta * S ** 2 / sigma_y ** 2 * (dawsn(np.sqrt(c)) - dawsn(t0 * np.sqrt(c))
                                          * np.exp(-c * v_m)) / np.sqrt(c)
    mu = MU.reshape(-1)
    rows = _rows(a)
    mean = mu - t0 * (np.eye(DIMS) - rows) @ mu - shrink * rows @ mu + gain * (y - mu @ a.T) @ a
    return mean, (shrink * sigma_max) ** 2


@pytest.mark.parametrize("sigma_y,zeta", [(0.1, 1.0), (0.1, 0.5), (0.1, 0.25), (0.5, 1.0)])
def test_dps_samples_its_closed_form_biased_law(sigma_y, zeta):
    """DPS takes p(y | x_t) = p(y | x0 = D(x_t)), ignoring Cov[x0 | x_t]: on Gaussian data its
    samples follow dps_law, not the posterior. The observed variance is S^2 e^(-zeta r) against
    the posterior's S^2 / (1 + r) (r = a^2 S^2 / sigma_y^2 = 6.25 at sigma_y = 0.1): a collapse
    at zeta = 1 (0.014 of it), 0.32 at zeta = 0.5, over-dispersion at 0.25 (1.52; exact at
    zeta = ln(1 + r) / r = 0.32), and a bias fading as sigma_y grows (0.97 at sigma_y = 0.5)."""
    op = Operator("box_downsample", 2)
    x, y = _sample("dps", op, sigma_y, num_steps=256, dps_scale=zeta)
    a = _matrix(op)
    mean, observed_var = dps_law(a, y, sigma_y, zeta, SIGMA_MAX)
    rows = _rows(a)
    resid = x - mean
    cov = S ** 2 * (np.eye(DIMS) - rows) + observed_var * rows
    assert (np.abs(resid.mean(0)) / np.sqrt(np.diag(cov) / N)).max() < 4.0
    sampled = np.trace(np.cov((resid @ rows).T)) / np.trace(rows)
    assert abs(sampled / observed_var - 1) < 0.05, (sampled, observed_var)


def test_dps_reaches_its_law_as_the_sampler_step_shrinks():
    """DPS's gap to dps_law is discretization; Heun's is second order. The sampler is affine in
    the noise here, so one noise along a row of A and zero noise give the law's shrink and mean
    exactly: at sigma_y = 0.1, zeta = 1 the shrink's error falls about 4x per halved step
    (6.5% at 64 steps, so 14% in the observed variance). Its limit is DPS's own law, whose observed
    variance is 0.014 of the posterior's: no step size takes DPS to the posterior."""
    op = Operator("box_downsample", 2)
    a = _matrix(op)
    u = a[0] / np.linalg.norm(a[0])
    noise = np.stack([np.zeros(SHAPE), u.reshape(SHAPE)]).astype(np.float32)
    y = np.repeat(np.asarray(op.forward(jnp.asarray(MU[None]))) + 0.3, 2, axis=0)
    mean, observed_var = dps_law(a, y[:1].reshape(1, -1), 0.1, 1.0, SIGMA_MAX)
    errors = []
    for num_steps in (64, 128, 256):
        x = _run("dps", op, y, 0.1, jnp.asarray(noise), num_steps, 1.0)
        shrink = (x[1] - x[0]) @ u
        errors.append((abs(shrink / np.sqrt(observed_var) - 1), np.abs(x[0] - mean[0]).max()))
    (s64, m64), (s128, m128), (s256, m256) = errors
    assert s64 > 3 * s128 > 3 ** 2 * s256 and s256 < 0.01, errors
    assert m256 < 1e-4 < m64, errors  # DPS's mean is 0.12 from the posterior's here


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
