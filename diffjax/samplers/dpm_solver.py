"""DPM-Solver++ multistep, 2M and 3M (Lu et al. 2022, "DPM-Solver++", Alg. 2 and its 3rd-order
multistep form), in data prediction, written in the VE-equivalent coordinates x / alpha with
lambda = -log(sigma / alpha), so one formula serves every schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.samplers.grids import sigma_ve
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS


def multistep_coefficients(sigmas: np.ndarray, order: int) -> np.ndarray:
    """[N, 4] float64 rows (ratio, c0, c1, c2) with
    x_{i+1} = ratio x_i + c0 m_i + c1 m_{i-1} + c2 m_{i-2}, where m_j = x0_hat at sigma_j, for
    the steps sigma_0 > ... > sigma_{N-1} > sigma_N = 0.

    Step i uses order min(order, i + 1) (warm-up) and the last step, to sigma = 0, returns m_i.
    Orders 1-3 are DPM-Solver++ 1 (= DDIM), 2M and 3M with phi_1 = expm1(-h), phi_2 = phi_1 / h + 1,
    phi_3 = phi_2 / h - 1/2 (dpm_solver's multistep_dpm_solver_{second,third}_update)."""
    n = len(sigmas)
    lam = -np.log(np.asarray(sigmas, np.float64))
    e = np.eye(3)  # m_i, m_{i-1}, m_{i-2} as basis vectors: the formulas give coefficient vectors
    rows = np.zeros((n, 4))
    for i in range(n):
        if i == n - 1:
            rows[i] = (0.0, 1.0, 0.0, 0.0)
            continue
        h = lam[i + 1] - lam[i]
        phi_1 = np.expm1(-h)
        k = min(order, i + 1)
        c = -phi_1 * e[0]
        if k >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (e[0] - e[1]) / r0
            if k == 2:
                c = c - 0.5 * phi_1 * d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (e[1] - e[2]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = phi_1 / h + 1.0
                phi_3 = phi_2 / h - 0.5
                c = c + phi_2 * d1 - phi_3 * d2
        rows[i] = (sigmas[i + 1] / sigmas[i], *c)
    return rows


def _multistep(pred: Prediction, ts, x, order: int):
    schedule = pred.schedule
    rows = jnp.asarray(multistep_coefficients(sigma_ve(schedule, ts), order), jnp.float32)

    def step(carry, inputs):
        x, m1, m2 = carry
        t, (ratio, c0, c1, c2) = inputs[0], inputs[1]
        m0 = pred.denoise_ve(x, t)
        return (ratio * x + c0 * m0 + c1 * m1 + c2 * m2, m0, m1), None

    x_ve = x / schedule.alpha(jnp.asarray(ts[0], jnp.float32))
    zeros = jnp.zeros_like(x_ve)
    (x0, _, _), _ = jax.lax.scan(step, (x_ve, zeros, zeros),
                                 (jnp.asarray(ts), tuple(rows.T)))
    return x0, len(ts)


@SAMPLERS.register("dpmpp_2m")
def dpmpp_2m(pred: Prediction, ts, x, rng, opts=None):
    """DPM-Solver++(2M): second order, one NFE per step."""
    del rng, opts
    return _multistep(pred, ts, x, 2)


@SAMPLERS.register("dpmpp_3m")
def dpmpp_3m(pred: Prediction, ts, x, rng, opts=None):
    """DPM-Solver++(3M): third order, one NFE per step."""
    del rng, opts
    return _multistep(pred, ts, x, 3)
