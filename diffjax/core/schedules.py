"""Noise schedules as immutable values with pure methods.

Every schedule maps a time t in [0, 1] (t=0: clean data, t=1: most noise) to the forward process
x_t = alpha(t) * x_0 + sigma(t) * eps. Variance-preserving (VP) schedules have
alpha^2 + sigma^2 = 1; variance-exploding (VE, EDM) ones have alpha = 1.
log-SNR is logsnr(t) = log(alpha^2 / sigma^2) and decreases strictly with t.

Flow-matching interpolants (Lipman et al. 2023; Liu et al. 2023; Ma et al. 2024, SiT) are schedules
too: the linear / rectified flow x_t = (1 - t) x_0 + t eps and SiT's GVP (cos, sin). They reach
alpha = 0 at t = 1, where sigma / alpha is infinite, so their sampling grids start at t_max < 1.
Every schedule gives the time derivatives of alpha and sigma (`rates`), which a velocity
parameterization needs.

Discrete schedules (DDPM beta tables) put step i in {0, ..., T-1} at t = (i + 1) / T, the network
sees the integer index i, and log-SNR is interpolated linearly in t between grid points.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.options import check
from diffjax.registry import Registry

# Picked by config.diffusion.schedule; schedule NAME's options live in config.diffusion.NAME.
SCHEDULES = Registry("schedule", "diffusion.schedule", "diffusion")


# ---------------------------------------------------------------------------------------------
# Discrete beta tables (numpy, float64).


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """DDPM (Ho et al. 2020, Sec. 4): betas linear from beta_start to beta_end. Returns [T]."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(t: np.ndarray, s: float = 0.008) -> np.ndarray:
    """iDDPM (Nichol & Dhariwal 2021) eq. 17: alpha_bar(t) = f(t) / f(0),
    f(t) = cos^2((t + s) / (1 + s) pi / 2).

    t: continuous time in [0, 1]."""
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return f(np.asarray(t, np.float64)) / f(0.0)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """iDDPM eq. 17 as betas, beta_t = 1 - alpha_bar(t) / alpha_bar(t-1), clipped at max_beta."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(steps, s)
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def sigmoid_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """GeoDiff (Xu et al. 2022) betas: sigmoid(linspace(-6, 6, T)) rescaled to [start, end]."""
    u = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-u)) * (beta_end - beta_start) + beta_start


def alpha_bar_from_betas(betas: np.ndarray) -> np.ndarray:
    """alpha_bar_i = prod_{j<=i} (1 - beta_j). Returns [T] float64."""
    return np.cumprod(1.0 - np.asarray(betas, np.float64))


# ---------------------------------------------------------------------------------------------
# Schedules.


class _Base:
    """Shared maths: everything follows from logsnr(t) (VP) or sigma(t) (VE)."""

    variance_preserving: bool = True
    is_discrete: bool = False
    is_interpolant: bool = False    # a flow-matching path with alpha(1) = 0
    t_max: float = 1.0              # the largest sampling time (the grid's t_0)
    sampling_t_min: float | None = None  # the smallest; None: grids.default_t_min's rule

    def logsnr(self, t):
        raise NotImplementedError

    def rates(self, alpha, sigma):
        """(d alpha / dt, d sigma / dt) at the time with this (alpha, sigma), as a function of
        them (t = t_from_logsnr(log alpha^2 / sigma^2)). [B] or scalars each."""
        alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
        t = self.t_from_logsnr(jnp.log(alpha**2) - jnp.log(sigma**2))
        tangent = jnp.ones_like(t)
        _, d_alpha = jax.jvp(self.alpha, (t,), (tangent,))
        _, d_sigma = jax.jvp(self.sigma, (t,), (tangent,))
        return d_alpha, d_sigma

    def alpha(self, t):
        """Signal scale alpha(t)."""
        if self.variance_preserving:
            return jnp.sqrt(_sigmoid(self.logsnr(t)))
        return jnp.ones_like(jnp.asarray(t, jnp.float32))

    def sigma(self, t):
        """Noise scale sigma(t)."""
        return jnp.sqrt(_sigmoid(-self.logsnr(t)))


def _sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


@dataclasses.dataclass(frozen=True)
class DiscreteSchedule(_Base):
    """A DDPM beta table. Step i in {0..T-1} sits at t = (i+1)/T; t is clipped to [1/T, 1]."""

    betas: tuple[float, ...]
    name: str = "linear"
    is_discrete = True

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def alpha_bar(self) -> np.ndarray:
        """[T] float64 cumulative product of (1 - beta)."""
        return alpha_bar_from_betas(np.array(self.betas))

    def _grid(self):
        alpha_bar = self.alpha_bar
        t_grid = np.arange(1, self.num_timesteps + 1, dtype=np.float64) / self.num_timesteps
        logsnr = np.log(alpha_bar) - np.log1p(-alpha_bar)
        return jnp.asarray(t_grid, jnp.float32), jnp.asarray(logsnr, jnp.float32)

    def logsnr(self, t):
        t_grid, logsnr_grid = self._grid()
        return jnp.interp(jnp.asarray(t, jnp.float32), t_grid, logsnr_grid)

    def t_from_logsnr(self, logsnr):
        t_grid, logsnr_grid = self._grid()
        return jnp.interp(-jnp.asarray(logsnr, jnp.float32), -logsnr_grid, t_grid)

    def t_from_index(self, index):
        """Integer step index i -> time (i + 1) / T."""
        return (jnp.asarray(index, jnp.float32) + 1.0) / self.num_timesteps


@dataclasses.dataclass(frozen=True)
class VPLinear(_Base):
    """score_sde VP SDE: beta(t) = beta_min + t (beta_max - beta_min);
    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    name: ClassVar[str] = "vp_linear"

    def __post_init__(self):
        check(0 < self.beta_min < self.beta_max, "beta_min", self.beta_min,
              f"need 0 < beta_min < beta_max (={self.beta_max})")

    def _log_alpha2(self, t):
        t = jnp.asarray(t, jnp.float32)
        return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min

    def logsnr(self, t):
        log_alpha2 = self._log_alpha2(t)
        return log_alpha2 - jnp.log(-jnp.expm1(log_alpha2))

    def t_from_logsnr(self, logsnr):
        log_alpha2 = -jnp.logaddexp(0.0, -jnp.asarray(logsnr, jnp.float32))
        d = self.beta_max - self.beta_min
        return (-self.beta_min + jnp.sqrt(self.beta_min**2 - 2.0 * d * log_alpha2)) / d


@dataclasses.dataclass(frozen=True)
class VPCosine(_Base):
    """Continuous cosine schedule by log-SNR: logsnr(t) = -2 log tan(a t + b), spanning
    [logsnr_min, logsnr_max]."""

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    name: ClassVar[str] = "vp_cosine"

    def __post_init__(self):
        check(self.logsnr_min < self.logsnr_max, "logsnr_min", self.logsnr_min,
              f"need logsnr_min < logsnr_max (={self.logsnr_max})")

    def _ab(self):
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        return a, b

    def logsnr(self, t):
        a, b = self._ab()
        return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t, jnp.float32) + b))

    def t_from_logsnr(self, logsnr):
        a, b = self._ab()
        return (jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))) - b) / a


@dataclasses.dataclass(frozen=True)
class VESchedule(_Base):
    """score_sde VE SDE (NCSN): sigma(t) = sigma_min (sigma_max / sigma_min)^t, alpha = 1.
    The defaults are the range diffjax has always given `ve` (EDM's); score_sde's CIFAR-10 runs
    used sigma_min = 0.01, sigma_max = 50."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: ClassVar[str] = "ve"
    variance_preserving = False

    def __post_init__(self):
        _check_sigma_range(self.sigma_min, self.sigma_max)

    def sigma(self, t):
        t = jnp.asarray(t, jnp.float32)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def logsnr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_from_logsnr(self, logsnr):
        sigma = jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))
        return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class EDMSchedule(_Base):
    """EDM (Karras et al. 2022, eq. 5):
    sigma(t) = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    name: ClassVar[str] = "edm"
    variance_preserving = False

    def __post_init__(self):
        _check_sigma_range(self.sigma_min, self.sigma_max)
        check(self.rho > 0, "rho", self.rho, "must be > 0")

    def sigma(self, t):
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + jnp.asarray(t, jnp.float32) * (hi - lo)) ** self.rho

    def logsnr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_from_logsnr(self, logsnr):
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigma = jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))
        return (sigma ** (1 / self.rho) - lo) / (hi - lo)


@dataclasses.dataclass(frozen=True)
class LinearInterpolant(_Base):
    """Linear / rectified flow (Liu et al. 2023; SiT 'Linear'; SD3): alpha = 1 - t, sigma = t,
    velocity dx/dt = eps - x0. t_max: the first sampling time (alpha(1) = 0)."""

    t_max: float = 0.999
    name: ClassVar[str] = "flow_linear"
    variance_preserving = False
    is_interpolant = True
    sampling_t_min = 1e-3

    def __post_init__(self):
        _check_t_max(self.t_max)

    def alpha(self, t):
        return 1.0 - jnp.asarray(t, jnp.float32)

    def sigma(self, t):
        return jnp.asarray(t, jnp.float32)

    def logsnr(self, t):
        t = jnp.asarray(t, jnp.float32)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_logsnr(self, logsnr):
        return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr, jnp.float32))

    def rates(self, alpha, sigma):
        alpha = jnp.asarray(alpha, jnp.float32) * jnp.ones_like(jnp.asarray(sigma, jnp.float32))
        return -jnp.ones_like(alpha), jnp.ones_like(alpha)


@dataclasses.dataclass(frozen=True)
class GVPInterpolant(_Base):
    """SiT's generalized variance-preserving path (Ma et al. 2024, Sec. 3):
    alpha = cos(pi t / 2), sigma = sin(pi t / 2); logsnr = -2 log tan(pi t / 2)."""

    t_max: float = 0.999
    name: ClassVar[str] = "flow_gvp"
    is_interpolant = True
    sampling_t_min = 1e-3

    def __post_init__(self):
        _check_t_max(self.t_max)

    def alpha(self, t):  # sin(pi (1 - t) / 2): exactly 0 at t = 1 in float32, where cos is not
        return jnp.sin(0.5 * math.pi * (1.0 - jnp.asarray(t, jnp.float32)))

    def sigma(self, t):
        return jnp.sin(0.5 * math.pi * jnp.asarray(t, jnp.float32))

    def logsnr(self, t):
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def t_from_logsnr(self, logsnr):
        return jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))) * (2.0 / math.pi)

    def rates(self, alpha, sigma):
        alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
        return -0.5 * math.pi * sigma, 0.5 * math.pi * alpha


def _check_t_max(t_max: float) -> None:
    check(0.5 < t_max < 1, "t_max", t_max, "must be in (0.5, 1): alpha(1) = 0, so sampling "
          "starts below t = 1 (e.g. 0.999)")


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    check(0 < sigma_min < sigma_max, "sigma_min", sigma_min,
          f"need 0 < sigma_min < sigma_max (={sigma_max})")


# ---------------------------------------------------------------------------------------------
# The registered schedules and their options.


@dataclasses.dataclass(frozen=True)
class BetaRange:
    """Options of the linear and sigmoid beta tables (DDPM: T = 1000, 1e-4 -> 0.02)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        check(self.num_timesteps >= 1, "num_timesteps", self.num_timesteps, "must be >= 1")
        check(0 < self.beta_start < self.beta_end < 1, "beta_start", self.beta_start,
              f"need 0 < beta_start < beta_end (={self.beta_end}) < 1")


@dataclasses.dataclass(frozen=True)
class CosineOptions:
    """Options of the iDDPM cosine table (eq. 17): offset s and the beta clip."""

    num_timesteps: int = 1000
    s: float = 0.008
    max_beta: float = 0.999

    def __post_init__(self):
        check(self.num_timesteps >= 1, "num_timesteps", self.num_timesteps, "must be >= 1")
        check(self.s >= 0, "s", self.s, "must be >= 0")
        check(0 < self.max_beta < 1, "max_beta", self.max_beta, "must be in (0, 1)")


@SCHEDULES.register("linear", options=BetaRange)
def _linear(o: BetaRange) -> DiscreteSchedule:
    return DiscreteSchedule(tuple(linear_betas(o.num_timesteps, o.beta_start, o.beta_end)),
                            "linear")


@SCHEDULES.register("cosine", options=CosineOptions)
def _cosine(o: CosineOptions) -> DiscreteSchedule:
    return DiscreteSchedule(tuple(cosine_betas(o.num_timesteps, o.s, o.max_beta)), "cosine")


@SCHEDULES.register("sigmoid", options=BetaRange)
def _sigmoid_table(o: BetaRange) -> DiscreteSchedule:
    return DiscreteSchedule(tuple(sigmoid_betas(o.num_timesteps, o.beta_start, o.beta_end)),
                            "sigmoid")


# each schedule is its own options
for _cls in (VPLinear, VPCosine, VESchedule, EDMSchedule, LinearInterpolant, GVPInterpolant):
    SCHEDULES.register(_cls.name, options=_cls)(lambda options: options)


def make_schedule(name: str, options=None) -> _Base:
    """The schedule registered as `name`, with `options` (its options dataclass; None: the
    defaults). E.g. make_schedule('cosine', CosineOptions(num_timesteps=4000))."""
    entry = SCHEDULES.get(name)
    return entry.factory(options if options is not None else entry.default_options())


def posterior(alpha_t, sigma_t, alpha_s, sigma_s):
    """q(x_s | x_t, x0) for s < t (Kingma et al. 2021, VDM eq. 26-28, general alpha/sigma):
    mean = c_xt x_t + c_x0 x0 and the variances 'small' (the true posterior variance) and
    'large' (sigma_{t|s}^2, DDPM's beta_t). Returns (c_xt, c_x0, var_small, var_large)."""
    alpha_ts = alpha_t / alpha_s
    sigma2_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    c_xt = alpha_ts * sigma_s**2 / sigma_t**2
    c_x0 = alpha_s * sigma2_ts / sigma_t**2
    return c_xt, c_x0, sigma2_ts * sigma_s**2 / sigma_t**2, sigma2_ts
