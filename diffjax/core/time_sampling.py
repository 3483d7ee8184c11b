"""Training-time distributions over t, their midpoint quantiles and the noise-level curriculum,
as pure functions of typed arguments."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.options import check

TIME_SAMPLINGS = ("uniform", "lognormal")


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
        raise ValueError(f"time_sampling={mode!r} is unknown; allowed: {', '.join(TIME_SAMPLINGS)}")
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


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """A noise-level curriculum over `steps` train steps (0: off): the time distribution moves
    linearly from its start values to the configured one (see `curriculum_at`)."""

    steps: int = 0
    t_min_start: float = 0.0
    t_max_start: float = 1.0
    p_mean_start: float = -1.2
    p_std_start: float = 1.2

    def __post_init__(self):
        check(self.steps >= 0, "curriculum_steps", self.steps,
              "must be >= 0 (0 disables the curriculum)")
        check(0 <= self.t_min_start < self.t_max_start <= 1, "curriculum_t_min_start",
              self.t_min_start, f"need 0 <= curriculum_t_min_start < curriculum_t_max_start "
              f"(={self.t_max_start}) <= 1")
        check(self.p_std_start > 0, "curriculum_p_std_start", self.p_std_start, "must be > 0")


def curriculum_at(curriculum: Curriculum, step, p_mean: float, p_std: float) -> dict:
    """The curriculum at train step `step` (an int or int32 scalar, may be traced).

    With f = clip(step / steps, 0, 1), each parameter of the time distribution moves linearly
    from its start value to its final one:
      uniform:   t ~ U[t_min, t_max], t_min = (1 - f) t_min_start,
                 t_max = (1 - f) t_max_start + f  (U[0, 1] from then on);
      lognormal: p_mean = (1 - f) p_mean_start + f p_mean, likewise p_std.
    Returns {'fraction', 't_min', 't_max', 'p_mean', 'p_std'}: float32 scalars."""
    if curriculum.steps <= 0:
        raise ValueError(f"curriculum_steps={curriculum.steps}: the curriculum is off")
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / float(curriculum.steps), 0.0, 1.0)
    lerp = lambda start, end: (1.0 - frac) * start + frac * end  # noqa: E731
    return {"fraction": frac,
            "t_min": lerp(curriculum.t_min_start, 0.0),
            "t_max": lerp(curriculum.t_max_start, 1.0),
            "p_mean": lerp(curriculum.p_mean_start, p_mean),
            "p_std": lerp(curriculum.p_std_start, p_std)}


def time_quantiles(schedule, mode: str, num_levels: int, p_mean: float = -1.2,
                   p_std: float = 1.2, t_min: float = 1e-5):
    """A fixed grid of `num_levels` times: the midpoint quantiles u_k = (k + 1/2) / K of the
    training time distribution (without curriculum), so that the mean loss over the grid is a
    stratified estimate of the expected training loss.

    uniform:   discrete: step index floor(u_k T) (t = (index + 1) / T); continuous:
               t = t_min + u_k (1 - t_min).
    lognormal: ln sigma_k = p_mean + p_std Phi^-1(u_k) (Karras et al. 2022, Table 1), mapped to t.
    Returns t: [K] float32, increasing."""
    if mode not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling={mode!r} is unknown; allowed: {', '.join(TIME_SAMPLINGS)}")
    u = (jnp.arange(num_levels, dtype=jnp.float32) + 0.5) / num_levels
    if mode == "uniform":
        if schedule.is_discrete:
            return schedule.t_from_index(jnp.floor(u * schedule.num_timesteps))
        return t_min + u * (1.0 - t_min)
    log_sigma = p_mean + p_std * jax.scipy.special.ndtri(u)
    return jnp.clip(schedule.t_from_logsnr(-2.0 * log_sigma), t_min, 1.0)


# ---------------------------------------------------------------------------------------------
# Flow matching (t = 1: noise).

FLOW_TIME_SAMPLINGS = ("uniform", "logit_normal")


def shift_time(t, shift: float):
    """SD3's timestep shift (Esser et al. 2024, eq. 23): t' = s t / (1 + (s - 1) t); s > 1 moves
    mass toward noise (t = 1). Flux's exp(mu) / (exp(mu) + 1/t - 1) is the same map with
    s = exp(mu). t: [B] in [0, 1] -> [B]."""
    t = jnp.asarray(t, jnp.float32)
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(shift: float, base_size: int, height: int, width: int) -> float:
    """SD3's resolution-dependent shift (Sec. 5.3.2): s = shift sqrt(H W / base_size^2), the
    factor that keeps the noise-to-signal ratio of a base_size x base_size image at H x W;
    base_size 0: `shift` unchanged."""
    if base_size <= 0:
        return float(shift)
    return float(shift) * float(np.sqrt(height * width / base_size**2))


def flow_time(rng, batch_size: int, mode: str = "uniform", logit_mean: float = 0.0,
              logit_std: float = 1.0, shift: float = 1.0, t_min: float = 0.0,
              t_max: float = 1.0):
    """Flow-matching training times: [B] float32 in [t_min, t_max].

    uniform:      t ~ U[0, 1] (Lipman et al. 2023; SiT);
    logit_normal: t = sigmoid(u), u ~ N(logit_mean, logit_std^2) (SD3, Esser et al. 2024, eq. 19;
                  m = 0, s = 1 there);
    then SD3's shift (shift_time) and a clip to [t_min, t_max]."""
    if mode not in FLOW_TIME_SAMPLINGS:
        raise ValueError(f"time_sampling={mode!r} is unknown; allowed: "
                         f"{', '.join(FLOW_TIME_SAMPLINGS)}")
    if mode == "uniform":
        t = jax.random.uniform(rng, (batch_size,), jnp.float32)
    else:
        t = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch_size,)))
    return jnp.clip(shift_time(t, shift), t_min, t_max)


def flow_time_quantiles(num_levels: int, mode: str = "uniform", logit_mean: float = 0.0,
                        logit_std: float = 1.0, shift: float = 1.0, t_min: float = 0.0,
                        t_max: float = 1.0):
    """The midpoint quantiles u_k = (k + 1/2) / K of flow_time's distribution: [K], increasing."""
    if mode not in FLOW_TIME_SAMPLINGS:
        raise ValueError(f"time_sampling={mode!r} is unknown; allowed: "
                         f"{', '.join(FLOW_TIME_SAMPLINGS)}")
    u = (jnp.arange(num_levels, dtype=jnp.float32) + 0.5) / num_levels
    if mode == "logit_normal":
        u = jax.nn.sigmoid(logit_mean + logit_std * jax.scipy.special.ndtri(u))
    return jnp.clip(shift_time(u, shift), t_min, t_max)
