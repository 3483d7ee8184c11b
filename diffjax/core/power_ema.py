"""EDM2's power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models", Sec. 3.1 and Appendix C.1-C.2).

A power-function EMA at time t (updates done) averages the params p_tau with the weight density
(gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]. Its relative standard deviation sigma_rel (the
width of that profile over t) fixes gamma by eq. 3. The discrete update with
beta_t = (1 - 1/t)^(gamma + 1) gives update k of t the weight (k^(gamma+1) - (k-1)^(gamma+1)) /
t^(gamma+1), the profile integrated over step k. Post-hoc, a profile of another (sigma_rel, t) is
the least-squares combination of stored snapshots' profiles (Appendix C.2), solved with the
closed-form inner products of power functions. Host-side float64 numpy, except `beta`.
"""

from __future__ import annotations

import numpy as np

# sigma_rel of gamma = 0 (a uniform average over all of training); larger ones need gamma < 0.
MAX_SIGMA_REL = float(np.sqrt(1.0 / 12.0))


def sigma_rel_of_gamma(gamma):
    """EDM2 eq. 3: sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))."""
    gamma = np.asarray(gamma, np.float64)
    return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of_sigma_rel(sigma_rel):
    """The exponent gamma >= 0 of a profile of width sigma_rel in (0, MAX_SIGMA_REL]: the real
    root of eq. 3 squared, gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0."""
    sigma_rel = np.asarray(sigma_rel, np.float64)
    out = []
    for s in sigma_rel.reshape(-1):
        if not 0 < s <= MAX_SIGMA_REL * (1 + 1e-12):
            raise ValueError(f"sigma_rel={s} must be in (0, {MAX_SIGMA_REL:.4f}]")
        roots = np.roots([1.0, 7.0, 16.0 - s ** -2, 12.0 - s ** -2])
        out.append(max(max(r.real for r in roots if abs(r.imag) < 1e-9), 0.0))
    return np.asarray(out, np.float64).reshape(sigma_rel.shape)


def beta(step, gamma: float):
    """The decay of update `step` (0-based, jnp or numpy int): (1 - 1/t)^(gamma + 1) with
    t = step + 1 updates after it, so the first update copies the params."""
    import jax.numpy as jnp

    t = jnp.asarray(step, jnp.float32) + 1.0
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def update_weights(t: int, gamma: float) -> np.ndarray:
    """[t] the weight of the params after update k = 1..t in the EMA after t updates:
    (k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1)."""
    k = np.arange(1, t + 1, dtype=np.float64)
    return (k / t) ** (gamma + 1) - ((k - 1) / t) ** (gamma + 1)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b):
    """The L2 inner product of two power-function profiles (gamma + 1) tau^gamma / t^(gamma + 1)
    on [0, t]; broadcasts. (EDM2 Appendix C.2, `power_function_correlation`.)"""
    t_a, t_b = np.asarray(t_a, np.float64), np.asarray(t_b, np.float64)
    gamma_a, gamma_b = np.asarray(gamma_a, np.float64), np.asarray(gamma_b, np.float64)
    ratio = np.where(t_a < t_b, (t_a / t_b) ** gamma_b, (t_b / t_a) ** gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * ratio / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def posthoc_coefficients(in_steps, in_sigma_rels, out_step: float, out_sigma_rel: float):
    """Least-squares weights of the stored snapshots for the profile (out_sigma_rel, out_step).

    in_steps, in_sigma_rels: [N] each snapshot's time (updates done) and width. Returns
    (coefficients [N] summing to 1, relative L2 error of the fitted profile): the snapshot
    average sum_i c_i snapshot_i approximates the target EMA; the error measures how well."""
    t = np.asarray(in_steps, np.float64)
    g = gamma_of_sigma_rel(np.asarray(in_sigma_rels, np.float64))
    g_out = float(gamma_of_sigma_rel(out_sigma_rel))
    gram = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    target = profile_inner_product(t, g, float(out_step), g_out)
    coefficients = np.linalg.lstsq(gram, target, rcond=None)[0]
    self_product = float(profile_inner_product(out_step, g_out, out_step, g_out))
    residual = self_product - 2 * coefficients @ target + coefficients @ gram @ coefficients
    error = float(np.sqrt(max(residual, 0.0) / self_product))
    return coefficients / coefficients.sum(), error
