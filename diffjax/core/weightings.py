"""Loss weightings as pure functions of (alpha, sigma).

Every weighting is defined by its weight on the eps-space error ||eps_hat - eps||^2 as a function
of SNR = alpha^2 / sigma^2 (Kingma & Gao 2023); `loss_weight` turns it into the weight on the
error of whatever the network predicts, so all parameterizations optimise the same objective.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.core.parameterizations import Parameterization
from diffjax.options import choice

WEIGHTINGS = ("simple", "snr", "min_snr", "edm")


def eps_weight(weighting: str, parameterization: Parameterization, alpha, sigma,
               min_snr_gamma: float = 5.0, sigma_data: float = 0.5):
    """Weight w(t) on ||eps_hat - eps||^2: [B].

    simple:  unweighted MSE of the network's own target (Ho et al. 2020 L_simple for eps).
    snr:     SNR-weighted x0 error, i.e. w = 1 (equals simple for eps-prediction).
    min_snr: min(SNR, gamma)-weighted x0 error (Hang et al. 2023, eq. 8): w = min(SNR, gamma) / SNR.
    edm:     EDM lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the x0 error
             (Karras et al. 2022, eq. 8), written with SNR: w = 1 + 1 / (sigma_data^2 SNR).
    """
    choice("weighting", weighting, WEIGHTINGS)
    alpha, sigma = jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)
    snr = alpha**2 / sigma**2
    if weighting == "simple":
        return parameterization.error_scale(alpha, sigma)
    if weighting == "snr":
        return jnp.ones_like(snr)
    if weighting == "min_snr":
        return jnp.minimum(snr, min_snr_gamma) / snr
    return 1.0 + 1.0 / (sigma_data**2 * snr)


def loss_weight(weighting: str, parameterization: Parameterization, alpha, sigma,
                min_snr_gamma: float = 5.0, sigma_data: float = 0.5):
    """Weight on the MSE of the network's own target, so the loss equals eps_weight * eps-MSE."""
    if weighting == "simple":  # exactly 1, also where error_scale is 0 or inf (flow t = 0, 1)
        return jnp.ones_like(jnp.asarray(alpha, jnp.float32) * jnp.asarray(sigma, jnp.float32))
    w = eps_weight(weighting, parameterization, alpha, sigma, min_snr_gamma, sigma_data)
    return w / parameterization.error_scale(alpha, sigma)
