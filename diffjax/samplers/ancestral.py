"""DDPM ancestral sampling and DDIM, for any schedule (general alpha, sigma).

The ddpm sampler's variance='learned' is iDDPM's (Nichol & Dhariwal 2021, eq. 15): the denoiser
then returns 2C channels, the prediction and the network's v, and each step's log-variance is
f log(large) + (1 - f) log(small) with f = (v + 1) / 2, on the grid's own (respaced) steps as
improved-diffusion's respacing recomputes beta and beta_tilde."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.errors import ConfigError
from diffjax.options import check, choice
from diffjax.samplers.prediction import Prediction, posterior, step_coefficients
from diffjax.samplers.registry import SAMPLERS

DDPM_VARIANCES = ("small", "large", "learned")


@dataclasses.dataclass(frozen=True)
class DDPMOptions:
    """variance: 'small' (the posterior's), 'large' (beta_t) or 'learned' (iDDPM eq. 15, from
    a network's variance output, learn_sigma); temperature scales the noise."""

    variance: str = "small"
    temperature: float = 1.0

    def __post_init__(self):
        choice("variance", self.variance, DDPM_VARIANCES)
        check(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")

    @property
    def uses_variance_output(self) -> bool:
        """Whether the denoiser must return the network's variance channels after its
        prediction (the Generator then passes them, unguided)."""
        return self.variance == "learned"


@dataclasses.dataclass(frozen=True)
class DDIMOptions:
    """eta: DDIM's noise (0 deterministic, 1 = ddpm 'small'); temperature scales the noise."""

    eta: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        check(self.eta >= 0, "eta", self.eta, "must be >= 0")
        check(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")



def _scan(pred: Prediction, ts, x, rng, update, predict=None):
    """Runs update(x, x0, eps, coefficients, z) over the grid in one lax.scan; NFE = len(ts).
    predict(x, t) -> (x0, eps): pred.x0_eps unless given."""
    coefs = step_coefficients(pred.schedule, ts)
    predict = predict or pred.x0_eps

    def step(x, inputs):
        t, a_t, s_t, a_s, s_s, key = inputs
        x0, eps = predict(x, t)
        z = jax.random.normal(key, x.shape, jnp.float32)
        return update(x, x0, eps, (a_t, s_t, a_s, s_s), z), None

    keys = jax.random.split(rng, len(ts))
    x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), *coefs, keys))
    return x, len(ts)


def x0_eps_variance(pred: Prediction, x, t):
    """A denoiser output of 2C channels at x [B,H,W,C], time t (a scalar) -> (x0_hat, (eps_hat,
    v)): the prediction's converters on the first C channels, iDDPM's v the last C."""
    out = pred.denoiser(x, jnp.full((x.shape[0],), jnp.asarray(t, jnp.float32)))
    channels = x.shape[-1]
    if out.shape[-1] != 2 * channels:
        raise ConfigError(f"config.sampling.ddpm.variance='learned' needs a network with a "
                          f"variance output (config.model.<unet|dit>.learn_sigma=True, trained "
                          f"with config.objective.denoising.vlb_weight > 0): the denoiser gives "
                          f"{out.shape[-1]} channels for x's {channels}; allowed: small, large")
    out = out.astype(jnp.float32)
    main = out[..., :channels]
    x0, eps = dataclasses.replace(pred, denoiser=lambda *_: main).x0_eps(x, t)
    return x0, (eps, out[..., channels:])


def learned_variance(v, var_small, var_large):
    """iDDPM eq. 15 (improved-diffusion's LEARNED_RANGE): exp(f log var_large + (1 - f) log
    var_small), f = (v + 1) / 2. v: [B,H,W,C]; the variances: scalars (var_small > 0)."""
    frac = (v + 1.0) / 2.0
    return jnp.exp(frac * jnp.log(var_large) + (1.0 - frac) * jnp.log(var_small))


@SAMPLERS.register("ddpm", options=DDPMOptions)
def ddpm(pred: Prediction, ts, x, rng, opts: DDPMOptions):
    """Ancestral sampling from q(x_s | x_t, x0_hat) (Ho et al. 2020, Alg. 2) with the 'small'
    (posterior), 'large' (beta_t) or 'learned' (iDDPM eq. 15) variance; the last step returns
    the mean, x0_hat."""
    learned = opts.variance == "learned"

    def update(x, x0, eps, coefs, z):
        a_t, s_t, a_s, s_s = coefs
        c_xt, c_x0, var_small, var_large = posterior(a_t, s_t, a_s, s_s)
        if learned:  # eps is (eps_hat, v); var_small = 0 at the last step, which adds no noise
            var = learned_variance(eps[1], jnp.where(s_s > 0, var_small, 1.0), var_large)
        else:
            var = var_small if opts.variance == "small" else var_large
        var = jnp.where(s_s > 0, var, 0.0)
        return c_xt * x + c_x0 * x0 + jnp.sqrt(var) * opts.temperature * z

    if learned:
        return _scan(pred, ts, x, rng, update, lambda x, t: x0_eps_variance(pred, x, t))
    return _scan(pred, ts, x, rng, update)


@SAMPLERS.register("ddim", options=DDIMOptions)
def ddim(pred: Prediction, ts, x, rng, opts: DDIMOptions):
    """DDIM (Song et al. 2021, eq. 12): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat
    + temperature c z with c = eta sqrt(posterior variance); eta = 1 equals ddpm 'small'."""

    def update(x, x0, eps, coefs, z):
        a_t, s_t, a_s, s_s = coefs
        c = opts.eta * jnp.sqrt(posterior(a_t, s_t, a_s, s_s)[2])
        return a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c**2, 0.0)) * eps + opts.temperature * c * z

    return _scan(pred, ts, x, rng, update)
