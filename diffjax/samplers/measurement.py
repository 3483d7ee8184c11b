"""Posterior sampling for linear inverse problems y = A x0 + sigma_y n with an unconditional
model: the denoiser is replaced by that of p(x | y), so any sampler draws from the posterior.

In EDM's VE coordinates (x = x_t / alpha_t at noise sigma = sigma_t / alpha_t) Tweedie's formula
gives the denoiser D(x) = x + sigma^2 grad log p(x); the posterior's is therefore
    D_y(x) = D(x) + sigma^2 grad_x log p(y | x).
p(y | x) needs p(x0 | x), which both methods take as Gaussian around D(x):
  pigdm  Pseudoinverse-guided diffusion (Song et al. 2023): N(D(x), r^2 I) with
         r^2 = sigma_data^2 sigma^2 / (sigma_data^2 + sigma^2), exactly p(x0 | x) where the data
         are N(mu, sigma_data^2 I), so that the sampler then draws the exact posterior;
  dps    Diffusion posterior sampling (Chung et al. 2023): r = 0, p(y | x) ~ p(y | x0 = D(x)),
         scaled by dps_scale; biased wherever Cov[x0 | x] is not small against sigma_y^2.
Then grad_x log p(y | x) = J_D(x)^T A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A D(x)), the Jacobian
product by reverse-mode autodiff through the network. The operators here have A A^T = c I.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.samplers.prediction import Prediction

METHODS = ("pigdm", "dps")
OPERATORS = ("identity", "box_downsample")


@dataclasses.dataclass(frozen=True)
class Operator:
    """A linear observation A on [B, H, W, C] with A A^T = gram I. identity: denoising;
    box_downsample: the mean of factor x factor blocks (super-resolution), [B, H/f, W/f, C]."""

    name: str = "identity"
    factor: int = 1

    def __post_init__(self):
        if self.name not in OPERATORS:
            raise ValueError(f"operator {self.name!r} is unknown; allowed: {', '.join(OPERATORS)}")
        if self.factor < 1 or (self.name == "identity" and self.factor != 1):
            raise ValueError(f"factor={self.factor} is invalid for {self.name!r}: "
                             f"box_downsample takes an integer >= 1, identity only 1")

    @property
    def gram(self) -> float:
        return 1.0 / self.factor ** 2

    def check(self, shape) -> None:
        """ValueError unless the image side is a multiple of the factor."""
        h, w = shape[1:3]
        if h % self.factor or w % self.factor:
            raise ValueError(f"box_downsample factor {self.factor} must divide the image side; "
                             f"the images are {h}x{w}")

    def forward(self, x):
        if self.name == "identity":
            return x
        b, h, w, c = x.shape
        f = self.factor
        return x.reshape(b, h // f, f, w // f, f, c).mean((2, 4))

    def adjoint(self, y):
        if self.name == "identity":
            return y
        f = self.factor
        return jnp.repeat(jnp.repeat(y, f, 1), f, 2) / f ** 2

    def pseudo_inverse(self, y):
        """A^+ y = A^T (A A^T)^-1 y: for box_downsample, each block filled with its mean."""
        return self.adjoint(y) / self.gram


def posterior_denoiser(pred: Prediction, y, operator: Operator, sigma_y: float,
                       method: str = "pigdm", sigma_data: float = 0.5, dps_scale: float = 1.0):
    """A denoiser (x_t [B,H,W,C], t [B]) -> x0_hat of p(x0 | x_t, y) in the 'x0'
    parameterization (see the module docstring). y: [B, ...] observations of A x0."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown; allowed: {', '.join(METHODS)}")
    schedule = pred.schedule

    def denoise(x, times):
        t = times[0]
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        s2 = (sigma / alpha) ** 2
        x0, vjp = jax.vjp(lambda x_ve: pred.x0_eps(alpha * x_ve, t)[0], x / alpha)
        if method == "pigdm":
            weight = 1.0 / (operator.gram * sigma_data ** 2 * s2 / (sigma_data ** 2 + s2)
                            + sigma_y ** 2)
        else:
            weight = dps_scale / sigma_y ** 2
        (score,) = vjp(operator.adjoint(weight * (y - operator.forward(x0))))
        return x0 + s2 * score

    return denoise
