"""MeanFlow: the identity behind its target against the exact average velocity of Gaussian data,
the JVP through the U-Net against central differences, the one- and two-step sampler against the
exact ODE map, learning that map by the real objective, and the clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from diffjax.core import mean_flow as mf
from diffjax.core import schedules
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.models.network import NetworkSpec
from diffjax.models.unet import UNetOptions, build_unet
from diffjax.objectives import ObjectiveContext, make_objective
from diffjax.objectives.mean_flow import MeanFlowOptions
from diffjax.samplers import sample

FLOW = schedules.make_schedule("flow_linear")
MV = make_parameterization("mean_velocity", 0.5, FLOW)
MU, S = 0.3, 0.6  # x0 ~ N(MU, S^2) per pixel


def _moments(t):
    """Mean and std of z_t = (1 - t) x0 + t eps."""
    return (1 - t) * MU, jnp.sqrt((1 - t) ** 2 * S**2 + t**2)


def exact_u(z, r, t):
    """The exact average velocity of the linear flow of N(MU, S^2) data over [r, t], r < t: the
    ODE keeps (z - m) / s, so z_r = m_r + s_r (z_t - m_t) / s_t and u = (z_t - z_r) / (t - r)."""
    b = lambda c: jnp.reshape(c, c.shape + (1,) * (z.ndim - c.ndim))  # noqa: E731
    (m_t, s_t), (m_r, s_r) = _moments(b(t)), _moments(b(r))
    return (z - m_r - s_r * (z - m_t) / s_t) / (b(t) - b(r))


def exact_v(z, t):
    """The marginal velocity dz/dt = m'(t) + s'(t) (z - m_t) / s_t, s' = (t - (1 - t) S^2) / s."""
    tb = jnp.reshape(t, t.shape + (1,) * (z.ndim - t.ndim))
    m_t, s_t = _moments(tb)
    return -MU + (tb - (1 - tb) * S**2) / s_t**2 * (z - m_t)


def test_the_meanflow_target_is_the_exact_average_velocity_for_the_marginal_velocity():
    """With the exact u and the marginal v, v - (t - r) du/dt (the JVP with tangents (v, 0, 1))
    is u itself: the MeanFlow identity (eq. 6), at r from 0 to just below t."""
    rng = np.random.default_rng(0)
    t = jnp.asarray([0.2, 0.5, 0.9, 0.999, 0.7, 0.35], jnp.float32)
    r = t * jnp.asarray([0.0, 0.5, 0.1, 0.0, 0.99, 0.8], jnp.float32)
    z = jnp.asarray(rng.standard_normal((6, 3, 3, 1)), jnp.float32)
    v = exact_v(z, t)
    u, dudt = mf.total_derivative(exact_u, z, r, t, v)
    np.testing.assert_allclose(mf.target(v, dudt, r, t), u, rtol=2e-4, atol=2e-5)
    # r moving with t (tangent 1 on r) is another derivative, and the identity fails with it
    _, wrong = jax.jvp(exact_u, (z, r, t), (v, jnp.ones_like(r), jnp.ones_like(t)))
    assert np.abs(np.asarray(mf.target(v, wrong, r, t) - u)).max() > 0.05


def test_the_jvp_through_the_unet_is_the_derivative_along_the_flow():
    """du/dt by jax.jvp (the objective's total_derivative, jitted) through a U-Net with two time
    embeddings equals the central difference (u(z + h v, r, t + h) - u(z - h v, r, t - h)) / 2h.
    Here v . grad_z u dominates: u of 1000 t varies too fast in t for a float32 difference to
    check d_t u alone; the tangents' roles (v, 0, 1) are checked exactly by the identity test."""
    spec = NetworkSpec((8, 8, 1), num_noise_inputs=2)
    net = build_unet(UNetOptions(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                                 dropout=0.0), spec)
    params = net.init(jax.random.PRNGKey(0))
    # the zero-initialised layers (conv_out, each residual branch's last conv) get weights, so
    # that u depends on its inputs
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape) if not p.any() else p
                                for p, k in zip(leaves, keys)])
    obj = make_objective("mean_flow", MeanFlowOptions(), ObjectiveContext(FLOW, MV, net))
    u_fn = obj.average_velocity_fn(params, lambda p, x, c, cond: net.apply(p, x, c, cond), {})
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    v = jax.random.normal(jax.random.PRNGKey(2), z.shape)
    r, t = jnp.asarray([0.1, 0.0]), jnp.asarray([0.6, 0.9])
    _, dudt = jax.jit(lambda z, r, t, v: mf.total_derivative(u_fn, z, r, t, v))(z, r, t, v)
    h = 1e-3
    fd = (u_fn(z + h * v, r, t + h) - u_fn(z - h * v, r, t - h)) / (2 * h)
    rel = float(jnp.linalg.norm(dudt - fd) / jnp.linalg.norm(fd))
    assert rel < 0.005, rel  # measured 3.5e-4


@pytest.mark.parametrize("num_steps", [1, 2])
def test_the_sampler_with_the_exact_average_velocity_lands_on_the_exact_ode_map(num_steps):
    """mean_flow steps z_r = z_t - (t - r) u from the grid's first time t_0 = 0.999 to 0: with
    the exact u this is the exact flow map, m_0 + s_0 (z - m_t0) / s_t0, in 1 or 2 steps."""
    noise = jax.random.normal(jax.random.PRNGKey(3), (4, 3, 3, 1))

    def denoiser(x, t, r=None):
        return exact_u(x, r, t)

    x, nfe = sample(denoiser, FLOW, MV, noise, jax.random.PRNGKey(4), sampler="mean_flow",
                    num_steps=num_steps)
    t0 = FLOW.t_max
    z0 = noise * FLOW.sigma(t0)  # the sampler's start, x at t_0
    m_t, s_t = _moments(t0)
    expected = MU + S * (z0 - m_t) / s_t
    assert nfe == num_steps
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)


def test_mean_flow_training_learns_the_one_step_map_of_gaussian_data():
    """u = a(t, t - r) z + b(t, t - r), a and b small MLPs of the two noise inputs, trained by
    the mean_flow objective (JVP target, adaptive weight, 75% r != t) for 300 Adam steps: the
    one-step map z_1 - u(z_1, 0, 1) gets more than 4x closer to the exact ODE map
    MU + S z_1 and the two-step map too."""
    opts = MeanFlowOptions(p_mean=-0.4, p_std=1.0, ratio=0.75, power=0.5)
    obj = make_objective("mean_flow", opts, ObjectiveContext(FLOW, MV))
    layers = [(2, 32), (32, 32), (32, 2)]
    keys = jax.random.split(jax.random.PRNGKey(0), len(layers))
    params = [{"w": jax.random.normal(k, s) / math.sqrt(s[0]), "b": jnp.zeros(s[1])}
              for k, s in zip(keys, layers)]
    params[-1] = jax.tree.map(jnp.zeros_like, params[-1])

    def apply(p, x, c_noise, cond):
        h = jnp.stack(c_noise, -1) / 1000.0
        for layer in p[:-1]:
            h = jax.nn.silu(h @ layer["w"] + layer["b"])
        ab = h @ p[-1]["w"] + p[-1]["b"]
        return ab[:, 0, None, None, None] * x + ab[:, 1, None, None, None]

    z1 = jax.random.normal(jax.random.PRNGKey(9), (512, 2, 2, 1))

    def error(p, num_steps):
        def denoiser(x, t, r=None):
            return obj.parameterization.network_output(
                lambda x_in, c: apply(p, x_in, c, {}), x, t, FLOW, r=r)
        x, _ = sample(denoiser, FLOW, MV, z1, jax.random.PRNGKey(0), sampler="mean_flow",
                      num_steps=num_steps)
        t0 = FLOW.t_max
        m_t, s_t = _moments(t0)
        return float(jnp.mean((x - (MU + S * (z1 * t0 - m_t) / s_t)) ** 2))

    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, k):
        rng = jax.random.fold_in(jax.random.PRNGKey(1), k)
        x = MU + S * jax.random.normal(jax.random.fold_in(rng, 0), (128, 2, 2, 1))
        inputs = obj.prepare(x, {}, jax.random.fold_in(rng, 1), k)
        grads = jax.grad(lambda p: obj.loss({"network": p}, apply, inputs, {}, k)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    before = [error(params, n) for n in (1, 2)]
    for k in range(300):
        params, opt = step(params, opt, k)
    after = [error(params, n) for n in (1, 2)]
    assert after[0] < 0.25 * before[0] and after[1] < 0.25 * before[1], (before, after)


def test_bad_mean_flow_settings_fail_clearly(data_dir):
    from diffjax.experiment import Experiment

    mf_config = dict(**{"diffusion.schedule": "flow_linear",
                        "diffusion.parameterization": "mean_velocity",
                        "objective.name": "mean_flow", "sampling.sampler": "mean_flow"})
    with pytest.raises(ConfigError, match="sampler='mean_flow' samples average-velocity models.*"
                                          "parameterization is 'eps'"):
        Experiment(tiny_config(data_dir, **{"sampling.sampler": "mean_flow"}))
    with pytest.raises(ConfigError, match="parameterization must be 'mean_velocity', not "
                                          "'velocity'"):
        Experiment(tiny_config(data_dir, **{**mf_config, "diffusion.parameterization":
                                            "velocity", "sampling.sampler": "flow_euler"}))
    with pytest.raises(ConfigError, match="mean_flow' needs a continuous schedule"):
        Experiment(tiny_config(data_dir, **{**mf_config, "diffusion.schedule": "linear"}))


def test_validation_uses_the_logit_normal_midpoint_quantiles_with_r_zero():
    """The K fixed validation pairs: t_k = sigmoid(m + s Phi^-1((k + 1/2) / K)) (scipy's normal
    quantiles), r = 0 (the one-step map); the losses are [K, B] and the same on every call."""
    from scipy import special, stats

    obj = make_objective("mean_flow", MeanFlowOptions(p_mean=-2.0, p_std=2.0),
                         ObjectiveContext(FLOW, MV))
    r, t = obj.validation_times(8)
    q = (np.arange(8) + 0.5) / 8
    np.testing.assert_allclose(t, special.expit(-2.0 + 2.0 * stats.norm.ppf(q)), rtol=1e-5)
    np.testing.assert_array_equal(r, np.zeros(8))

    def apply(p, x, c_noise, cond):
        return 0.5 * x

    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 2, 2, 1)), jnp.float32)
    losses = [obj.validation_losses({"network": None}, apply, x, {}, jax.random.PRNGKey(0), 8)
              for _ in range(2)]
    assert losses[0].shape == (8, 3) and bool(jnp.all(losses[0] > 0))
    np.testing.assert_array_equal(losses[0], losses[1])
