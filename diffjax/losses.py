"""Parameterizations, converters, loss weightings and time sampling, as pure functions.

Forward process: x_t = alpha x_0 + sigma eps. The network predicts one of
  eps: the noise;  x0: the clean image;  v = alpha eps - sigma x0 (Salimans & Ho 2022);
  edm: F of the EDM preconditioning (Karras et al. 2022, Table 1),
       x0 = c_skip x_t / alpha + c_out F, with the network fed c_in x_t / alpha. It is written
       with the VE-equivalent noise level sigma / alpha, so it works on VP schedules too
       (x_t / alpha = x0 + (sigma / alpha) eps).
Every weighting is defined by its weight on the eps-space error ||eps_hat - eps||^2 as a function
of SNR = alpha^2 / sigma^2 (Kingma & Gao 2023); `loss_weight` turns it into the weight on the
error of whatever the network predicts, so all parameterizations optimise the same objective.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

PARAMETERIZATIONS = ("eps", "x0", "v", "edm")
WEIGHTINGS = ("simple", "snr", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "lognormal")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"config.diffusion.{name}={value!r} is unknown; allowed: {', '.join(allowed)}")


def _bcast(coef, x):
    """[B] -> [B, 1, 1, 1] to broadcast against images."""
    coef = jnp.asarray(coef, x.dtype)
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


# ---------------------------------------------------------------------------------------------
# Converters. alpha, sigma: [B] (or scalars); images: [B, H, W, C].


def x0_from_eps(x_t, eps, alpha, sigma):
    """x0 = (x_t - sigma eps) / alpha."""
    return (x_t - _bcast(sigma, x_t) * eps) / _bcast(alpha, x_t)


def eps_from_x0(x_t, x0, alpha, sigma):
    """eps = (x_t - alpha x0) / sigma."""
    return (x_t - _bcast(alpha, x_t) * x0) / _bcast(sigma, x_t)


def v_from_x0_eps(x0, eps, alpha, sigma):
    """v = alpha eps - sigma x0."""
    return _bcast(alpha, x0) * eps - _bcast(sigma, x0) * x0


def x0_eps_from_v(x_t, v, alpha, sigma):
    """Inverts (x_t, v) -> (x0, eps) for any alpha, sigma (not only VP):
    x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2),
    eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)."""
    a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
    norm = a**2 + s**2
    return (a * x_t - s * v) / norm, (s * x_t + a * v) / norm


def edm_preconditioning(alpha, sigma, sigma_data: float = 0.5):
    """EDM (Karras et al. 2022, Table 1) c_skip, c_out, c_in at the VE-equivalent noise level
    s = sigma / alpha, acting on x_t / alpha:  c_skip = sd^2 / (s^2 + sd^2),
    c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2).  alpha, sigma: [B] or scalars."""
    alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
    sigma_ve = sigma / alpha
    norm = jnp.sqrt(sigma_ve**2 + sigma_data**2)
    return sigma_data**2 / norm**2, sigma_ve * sigma_data / norm, 1.0 / norm


def input_scale(parameterization: str, alpha, sigma, sigma_data: float = 0.5):
    """The factor the network input x_t is multiplied by: 1, or for edm c_in / alpha
    = 1 / sqrt(sigma^2 + alpha^2 sigma_data^2). [B] or scalar."""
    _check("parameterization", parameterization, PARAMETERIZATIONS)
    alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
    if parameterization == "edm":
        return 1.0 / jnp.sqrt(sigma**2 + alpha**2 * sigma_data**2)
    return jnp.ones_like(alpha * sigma)


def network_output(apply_fn: Callable, x_t, t, schedule, parameterization: str,
                   sigma_data: float = 0.5):
    """Calls the network as training and sampling both must: input input_scale * x_t, conditioned
    on schedule.noise_cond(t). The one place the EDM c_in is applied.

    apply_fn: (network input [B,H,W,C], noise_cond [B]) -> output [B,H,W,C].  x_t: [B,H,W,C];
    t: [B] times. Returns the network output [B,H,W,C] float32 in `parameterization`."""
    c_in = input_scale(parameterization, schedule.alpha(t), schedule.sigma(t), sigma_data)
    return apply_fn(_bcast(c_in, x_t) * x_t, schedule.noise_cond(t)).astype(jnp.float32)


def x0_eps_from_output(parameterization: str, x_t, output, alpha, sigma, sigma_data: float = 0.5):
    """Network output -> (x0_hat, eps_hat) for the given parameterization."""
    _check("parameterization", parameterization, PARAMETERIZATIONS)
    if parameterization == "eps":
        return x0_from_eps(x_t, output, alpha, sigma), output
    if parameterization == "x0":
        return output, eps_from_x0(x_t, output, alpha, sigma)
    if parameterization == "v":
        return x0_eps_from_v(x_t, output, alpha, sigma)
    c_skip, c_out, _ = edm_preconditioning(alpha, sigma, sigma_data)
    x0 = _bcast(c_skip, x_t) * x_t / _bcast(alpha, x_t) + _bcast(c_out, x_t) * output
    return x0, eps_from_x0(x_t, x0, alpha, sigma)


def target(parameterization: str, x0, eps, alpha, sigma, sigma_data: float = 0.5):
    """What the network is trained to predict. For edm, F = (x0 - c_skip x_t / alpha) / c_out
    = (s x0 - sd^2 eps) / (sd sqrt(s^2 + sd^2)) with s = sigma / alpha (no division by c_out)."""
    _check("parameterization", parameterization, PARAMETERIZATIONS)
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
    sigma_ve = _bcast(sigma / alpha, x0)
    norm = jnp.sqrt(sigma_ve**2 + sigma_data**2)
    return (sigma_ve * x0 - sigma_data**2 * eps) / (sigma_data * norm)


# ---------------------------------------------------------------------------------------------
# Weightings.


def target_error_scale(parameterization: str, alpha, sigma, sigma_data: float = 0.5):
    """||target_hat - target||^2 / ||eps_hat - eps||^2 at fixed x_t (a function of t only):
    eps: 1;  x0: sigma^2 / alpha^2 = 1 / SNR;  v: (alpha^2 + sigma^2)^2 / alpha^2;
    edm: (sigma/alpha)^2 / c_out^2 = 1 + 1 / (sigma_data^2 SNR)."""
    _check("parameterization", parameterization, PARAMETERIZATIONS)
    alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
    if parameterization == "eps":
        return jnp.ones_like(alpha)
    if parameterization == "x0":
        return sigma**2 / alpha**2
    if parameterization == "v":
        return (alpha**2 + sigma**2) ** 2 / alpha**2
    return 1.0 + sigma**2 / (alpha**2 * sigma_data**2)


def eps_weight(weighting: str, parameterization: str, alpha, sigma, min_snr_gamma: float = 5.0,
               sigma_data: float = 0.5):
    """Weight w(t) on ||eps_hat - eps||^2.

    simple:  unweighted MSE of the network's own target (Ho et al. 2020 L_simple for eps).
    snr:     SNR-weighted x0 error, i.e. w = 1 (equals simple for eps-prediction).
    min_snr: min(SNR, gamma)-weighted x0 error (Hang et al. 2023, eq. 8): w = min(SNR, gamma) / SNR.
    edm:     EDM lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the x0 error
             (Karras et al. 2022, eq. 8), written with SNR: w = 1 + 1 / (sigma_data^2 SNR).
    """
    _check("weighting", weighting, WEIGHTINGS)
    alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
    snr = alpha**2 / sigma**2
    if weighting == "simple":
        return target_error_scale(parameterization, alpha, sigma, sigma_data)
    if weighting == "snr":
        return jnp.ones_like(snr)
    if weighting == "min_snr":
        return jnp.minimum(snr, min_snr_gamma) / snr
    return 1.0 + 1.0 / (sigma_data**2 * snr)


def loss_weight(weighting: str, parameterization: str, alpha, sigma, min_snr_gamma: float = 5.0,
                sigma_data: float = 0.5):
    """Weight on the MSE of the network's own target, so the loss equals eps_weight * eps-MSE."""
    w = eps_weight(weighting, parameterization, alpha, sigma, min_snr_gamma, sigma_data)
    return w / target_error_scale(parameterization, alpha, sigma, sigma_data)


# ---------------------------------------------------------------------------------------------
# Time sampling.


def sample_time(rng, batch_size: int, schedule, mode: str = "uniform", p_mean: float = -1.2,
                p_std: float = 1.2, t_min: float = 1e-5):
    """Training times t: [B] float32.

    uniform:   discrete schedules draw the step index uniformly from {0..T-1}; continuous ones
               draw t ~ U[t_min, 1].
    lognormal: EDM (Karras et al. 2022, Table 1): ln sigma ~ N(p_mean, p_std^2), with
               sigma = sigma / alpha the VE-equivalent noise level, mapped back to t.
    """
    if mode not in TIME_SAMPLINGS:
        raise ValueError(f"config.diffusion.time_sampling={mode!r} is unknown; allowed: "
                         f"{', '.join(TIME_SAMPLINGS)}")
    if mode == "uniform":
        if schedule.is_discrete:
            index = jax.random.randint(rng, (batch_size,), 0, schedule.num_timesteps)
            return schedule.t_from_index(index)
        return jax.random.uniform(rng, (batch_size,), minval=t_min, maxval=1.0)
    log_sigma = p_mean + p_std * jax.random.normal(rng, (batch_size,))
    t = schedule.t_from_logsnr(-2.0 * log_sigma)
    return jnp.clip(t, t_min, 1.0)


# ---------------------------------------------------------------------------------------------
# The training loss.


def diffusion_loss(apply_fn: Callable, x0, rng, schedule, cfg):
    """Weighted denoising loss of one batch.

    apply_fn: (network input [B,H,W,C], noise_cond [B]) -> network output [B,H,W,C]; it is called
    through `network_output`, which scales the input (EDM c_in) exactly as sampling does.
    x0: [B, H, W, C] float32 data in [-1, 1].  cfg: `config.diffusion`.
    Returns (scalar loss, per-example losses [B], t [B]).
    """
    t, eps = draw_noise(rng, x0.shape, schedule, cfg)
    return denoising_loss(apply_fn, x0, t, eps, schedule, cfg)


def draw_noise(rng, shape: tuple[int, ...], schedule, cfg):
    """The randomness of one training batch: times t [B] and noise eps [B, H, W, C]."""
    rng_t, rng_eps = jax.random.split(rng)
    t = sample_time(rng_t, shape[0], schedule, cfg.time_sampling, cfg.p_mean, cfg.p_std)
    return t, jax.random.normal(rng_eps, shape, jnp.float32)


def denoising_loss(apply_fn: Callable, x0, t, eps, schedule, cfg):
    """`diffusion_loss` for given times t [B] and noise eps [B, H, W, C] (so a batch can be split
    into micro-batches that see exactly the noise the whole batch would)."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    x_t = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps
    output = network_output(apply_fn, x_t, t, schedule, cfg.parameterization, cfg.sigma_data)
    mse = jnp.mean((output - target(cfg.parameterization, x0, eps, alpha, sigma, cfg.sigma_data))
                   ** 2, axis=tuple(range(1, x0.ndim)))
    weight = loss_weight(cfg.weighting, cfg.parameterization, alpha, sigma, cfg.min_snr_gamma,
                         cfg.sigma_data)
    per_example = weight * mse
    return jnp.mean(per_example), per_example, t
