"""DPM-Solver++ multistep, 2M and 3M (Lu et al. 2022, "DPM-Solver++", Alg. 2 and its 3rd-order
multistep form), in data prediction, written in the VE-equivalent coordinates x / alpha with
lambda = -log(sigma / alpha), so one formula serves every schedule.

The final step of the solve is first order, and in solves of fewer than 15 steps the one before it
at most second order (diffusers' DPMSolverMultistepScheduler: final_sigmas_type='zero' or
euler_at_final, and lower_order_final; Lu et al.'s code: lower_order_final). A multistep update
extrapolates x0_hat from the previous log-SNR intervals, and the final interval is far longer than
those on grids that end at the schedule's smallest noise level (uniform, leading: lambda grows by
2.9 in the last of 20 steps on the linear schedule against 0.66 in the one before; 2M with a
second-order final step: relative error 0.21 against the exact ODE on Gaussian data, 0.04 with a
first-order one). The final step is the one onto the last grid time when that is the schedule's
t_min (DPM-Solver's grid end t_0; the step to sigma = 0 then only denoises, its denoise_to_zero),
else the step to sigma = 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.samplers.grids import default_t_min, sigma_ve
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS

LOWER_ORDER_FINAL_BELOW = 15  # solves of fewer steps lower the order of the last two steps


def step_orders(num_steps: int, order: int, final_step: int) -> np.ndarray:
    """[num_steps] int: the order of each step: min(order, i + 1) (warm-up), 1 from final_step
    on, and at most final_step + 1 - i when the solve (final_step + 1 steps) is shorter than
    LOWER_ORDER_FINAL_BELOW."""
    i = np.arange(num_steps)
    orders = np.minimum(order, i + 1)
    if final_step + 1 < LOWER_ORDER_FINAL_BELOW:
        orders = np.minimum(orders, np.maximum(final_step + 1 - i, 1))
    orders[final_step:] = 1
    return orders


def multistep_coefficients(sigmas: np.ndarray, order: int,
                           final_step: int | None = None) -> np.ndarray:
    """[N, 4] float64 rows (ratio, c0, c1, c2) with
    x_{i+1} = ratio x_i + c0 m_i + c1 m_{i-1} + c2 m_{i-2}, where m_j = x0_hat at sigma_j, for
    the steps sigma_0 > ... > sigma_{N-1} > sigma_N = 0.

    Step i has order step_orders(N, order, final_step)[i]; final_step is the solve's last step
    (None: N - 1, the step to sigma = 0; N - 2: the step onto sigma_{N-1}). The step to sigma = 0
    returns m_{N-1}. Orders 1-3 are DPM-Solver++ 1 (= DDIM), 2M and 3M with phi_1 = expm1(-h),
    phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2 (dpm_solver's
    multistep_dpm_solver_{second,third}_update)."""
    n = len(sigmas)
    orders = step_orders(n, order, n - 1 if final_step is None else final_step)
    lam = -np.log(np.asarray(sigmas, np.float64))
    e = np.eye(3)  # m_i, m_{i-1}, m_{i-2} as basis vectors: the formulas give coefficient vectors
    rows = np.zeros((n, 4))
    for i in range(n):
        if i == n - 1:
            rows[i] = (0.0, 1.0, 0.0, 0.0)
            continue
        h = lam[i + 1] - lam[i]
        phi_1 = np.expm1(-h)
        k = orders[i]
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


def final_step_index(schedule, ts) -> int:
    """The index of the solve's final step on the grid ts [K]: K - 2 (onto the last grid time)
    when ts[-1] is the schedule's t_min (grids.default_t_min), else K - 1 (to sigma = 0)."""
    at_t_min = np.isclose(float(ts[-1]), default_t_min(schedule), rtol=1e-5, atol=1e-8)
    return len(ts) - 2 if at_t_min and len(ts) > 1 else len(ts) - 1


def _multistep(pred: Prediction, ts, x, order: int):
    schedule = pred.schedule
    rows = multistep_coefficients(sigma_ve(schedule, ts), order, final_step_index(schedule, ts))
    rows = jnp.asarray(rows, jnp.float32)

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
