"""Sampler names and options (the fields of config.sampling that samplers read), validated."""

from __future__ import annotations

import dataclasses
import math

from diffjax.sampling.grids import SPACINGS

SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "pc", "ode")
DDPM_VARIANCES = ("small", "large")
ODE_SOLVERS = ("tsit5", "dopri5", "dopri8", "bosh3")


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """Everything a sampler reads besides the denoiser, schedule and parameterization.

    sampler, num_steps, spacing, rho (karras spacing): the method and its time grid.
    ddpm/ddim: eta (DDIM noise, 1 = DDPM posterior), temperature (scales injected noise),
      ddpm_variance ('small': posterior, 'large': beta_t).
    euler/heun (EDM Algorithm 2): s_churn, s_tmin, s_tmax (VE-equivalent sigma range where churn
      applies), s_noise.
    pc (score_sde): snr and corrector_steps of the Langevin corrector.
    ode: ode_solver (diffrax), ode_rtol, ode_atol; num_steps and spacing only set the end points.
    clip_denoised: clip x0_hat to [-1, 1] in every sampler.
    """

    sampler: str = "ddim"
    num_steps: int = 50
    spacing: str = "uniform"
    rho: float = 7.0
    eta: float = 0.0
    temperature: float = 1.0
    ddpm_variance: str = "small"
    clip_denoised: bool = True
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    snr: float = 0.16
    corrector_steps: int = 1
    ode_solver: str = "tsit5"
    ode_rtol: float = 1e-5
    ode_atol: float = 1e-5

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_config(cls, sampling_cfg) -> "SamplerOptions":
        """Reads the fields of a `config.sampling` ConfigDict."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: sampling_cfg[name] for name in names})


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"config.sampling.{key}={value!r} is unknown; allowed: "
                         f"{', '.join(map(str, allowed))}")


def _check(key: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"config.sampling.{key}={value!r} is invalid: {rule}")


def validate(o) -> None:
    """Names and ranges of the sampler fields; `o` is a SamplerOptions or a config.sampling."""
    _choice("sampler", o.sampler, SAMPLERS)
    _choice("spacing", o.spacing, SPACINGS)
    _choice("ddpm_variance", o.ddpm_variance, DDPM_VARIANCES)
    _choice("ode_solver", o.ode_solver, ODE_SOLVERS)
    _check("num_steps", o.num_steps, o.num_steps >= 1, "must be >= 1")
    _check("rho", o.rho, o.rho > 0, "must be > 0")
    _check("eta", o.eta, o.eta >= 0, "must be >= 0")
    _check("temperature", o.temperature, o.temperature >= 0, "must be >= 0")
    _check("s_churn", o.s_churn, o.s_churn >= 0, "must be >= 0")
    _check("s_tmin", o.s_tmin, 0 <= o.s_tmin <= o.s_tmax,
           f"need 0 <= s_tmin <= s_tmax (={o.s_tmax})")
    _check("s_noise", o.s_noise, o.s_noise > 0, "must be > 0")
    _check("snr", o.snr, o.snr > 0, "must be > 0")
    _check("corrector_steps", o.corrector_steps, o.corrector_steps >= 0, "must be >= 0")
    _check("ode_rtol", o.ode_rtol, o.ode_rtol > 0, "must be > 0")
    _check("ode_atol", o.ode_atol, o.ode_atol > 0, "must be > 0")
