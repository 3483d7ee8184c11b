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
                p_std: float = 1.2, t_min: float = 1e-5, t_range=None):
    """Training times t: [B] float32.

    uniform:   discrete schedules draw the step index uniformly from {0..T-1}; continuous ones
               draw t ~ U[t_min, 1].
    lognormal: EDM (Karras et al. 2022, Table 1): ln sigma ~ N(p_mean, p_std^2), with
               sigma = sigma / alpha the VE-equivalent noise level, mapped back to t.
    t_range:   optional (lo, hi) scalars (possibly traced) narrowing `uniform` to t in [lo, hi]:
               step indices floor(lo T) .. ceil(hi T) - 1 (at least one), or U[max(lo, t_min), hi].
               Used by the noise-level curriculum (`curriculum_at`).
    """
    if mode not in TIME_SAMPLINGS:
        raise ValueError(f"config.diffusion.time_sampling={mode!r} is unknown; allowed: "
                         f"{', '.join(TIME_SAMPLINGS)}")
    if mode == "uniform":
        if t_range is not None:
            lo, hi = (jnp.asarray(v, jnp.float32) for v in t_range)
            if schedule.is_discrete:
                steps = schedule.num_timesteps
                first = jnp.clip(jnp.floor(lo * steps), 0, steps - 1).astype(jnp.int32)
                stop = jnp.clip(jnp.ceil(hi * steps), first + 1, steps).astype(jnp.int32)
                return schedule.t_from_index(jax.random.randint(rng, (batch_size,), first, stop))
            return jax.random.uniform(rng, (batch_size,), minval=jnp.maximum(lo, t_min),
                                      maxval=hi)
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


def draw_noise(rng, shape: tuple[int, ...], schedule, cfg, step=None):
    """The randomness of one training batch: times t [B] and noise eps [B, H, W, C].

    step: the train step (int32 scalar, may be traced); with cfg.curriculum_steps > 0 the time
    distribution is `curriculum_at(cfg, step)`'s, a pure function of the step (exact resume)."""
    rng_t, rng_eps = jax.random.split(rng)
    if cfg.get("curriculum_steps", 0) > 0 and step is not None:
        cur = curriculum_at(cfg, step)
        t = sample_time(rng_t, shape[0], schedule, cfg.time_sampling, cur["p_mean"],
                        cur["p_std"], t_range=(cur["t_min"], cur["t_max"]))
    else:
        t = sample_time(rng_t, shape[0], schedule, cfg.time_sampling, cfg.p_mean, cfg.p_std)
    return t, jax.random.normal(rng_eps, shape, jnp.float32)


def curriculum_at(cfg, step) -> dict:
    """The noise-level curriculum at train step `step` (an int or int32 scalar, may be traced).

    With f = clip(step / cfg.curriculum_steps, 0, 1), each parameter of the time distribution
    moves linearly from its start value to its final one:
      uniform:   t ~ U[t_min, t_max], t_min = (1 - f) curriculum_t_min_start,
                 t_max = (1 - f) curriculum_t_max_start + f  (U[0, 1] from then on);
      lognormal: p_mean = (1 - f) curriculum_p_mean_start + f p_mean, likewise p_std.
    Returns {'fraction', 't_min', 't_max', 'p_mean', 'p_std'}: float32 scalars."""
    steps = cfg.curriculum_steps
    if steps <= 0:
        raise ValueError(f"config.diffusion.curriculum_steps={steps}: the curriculum is off")
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / float(steps), 0.0, 1.0)
    lerp = lambda start, end: (1.0 - frac) * start + frac * end  # noqa: E731
    return {"fraction": frac,
            "t_min": lerp(cfg.curriculum_t_min_start, 0.0),
            "t_max": lerp(cfg.curriculum_t_max_start, 1.0),
            "p_mean": lerp(cfg.curriculum_p_mean_start, cfg.p_mean),
            "p_std": lerp(cfg.curriculum_p_std_start, cfg.p_std)}


def time_quantiles(schedule, cfg, num_levels: int, t_min: float = 1e-5):
    """A fixed grid of `num_levels` times: the midpoint quantiles u_k = (k + 1/2) / K of the
    training time distribution (without curriculum), so that the mean loss over the grid is a
    stratified estimate of the expected training loss.

    uniform:   discrete: step index floor(u_k T) (t = (index + 1) / T); continuous:
               t = t_min + u_k (1 - t_min).
    lognormal: ln sigma_k = p_mean + p_std Phi^-1(u_k) (Karras et al. 2022, Table 1), mapped to t.
    Returns t: [K] float32, increasing."""
    if cfg.time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"config.diffusion.time_sampling={cfg.time_sampling!r} is unknown; "
                         f"allowed: {', '.join(TIME_SAMPLINGS)}")
    u = (jnp.arange(num_levels, dtype=jnp.float32) + 0.5) / num_levels
    if cfg.time_sampling == "uniform":
        if schedule.is_discrete:
            return schedule.t_from_index(jnp.floor(u * schedule.num_timesteps))
        return t_min + u * (1.0 - t_min)
    log_sigma = cfg.p_mean + cfg.p_std * jax.scipy.special.ndtri(u)
    return jnp.clip(schedule.t_from_logsnr(-2.0 * log_sigma), t_min, 1.0)


def grid_loss(apply_fn: Callable, x0, ts, rng, schedule, cfg):
    """The training loss of x0 at each fixed time ts[k], with noise eps_k = normal(fold_in(rng,
    k), x0.shape): a deterministic validation loss (same rng, same value).

    apply_fn: as in `diffusion_loss`.  x0: [B, H, W, C];  ts: [K] times;  rng: a PRNG key.
    Returns per-example losses [K, B] (one network pass per level, under lax.map)."""
    def level(inputs):
        k, t = inputs
        eps = jax.random.normal(jax.random.fold_in(rng, k), x0.shape, jnp.float32)
        t_b = jnp.full((x0.shape[0],), t, jnp.float32)
        return denoising_loss(apply_fn, x0, t_b, eps, schedule, cfg)[1]

    ts = jnp.asarray(ts, jnp.float32)
    return jax.lax.map(level, (jnp.arange(ts.shape[0]), ts))


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
