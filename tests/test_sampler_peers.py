"""diffjax's samplers against diffusers' schedulers (the peer, installed for tests only) on Gaussian
data N(MU, S^2) with the exact denoiser: the same grid and the same noise give the same samples,
to float32 accuracy.

How the grids are matched. Our discrete grid times t = (n + 1) / T are the step indices n of
diffusers' DDPM-trained schedules; both sides use our linear betas (trained_betas), and the
denoiser gets n (diffusers) or t (diffjax) for the same alpha_bar[n].
  DDIM: diffusers' own `leading` and `trailing` spacings are ours (its step goes to n - T // K,
    which is the next grid index on these two spacings only), then to alpha_bar = 1.
  Euler, Heun: set_timesteps(timesteps=our indices); both end with an Euler step to sigma = 0.
  DPM-Solver++ 2M/3M: when our grid ends at the schedule's t_min (n = 0: uniform, leading,
    quadratic) the solve ends there, so diffusers gets the other K - 1 indices with
    final_sigmas_type='sigma_min' (its last sigma is that of n = 0) and a first-order final step
    (lower_order_final below 15 steps, euler_at_final at 15 and more), and its output is then
    denoised at n = 0, which is our step to sigma = 0. On `trailing` (ending at n = T / K - 1)
    diffusers gets all K indices with final_sigmas_type='zero'. Both lower the order of the step
    before the final one in solves of fewer than 15 steps (10 steps below, not 20).
"""

import jax
import numpy as np
import pytest
from test_sampling import LINEAR, MU, S, _sample

from diffjax import samplers as sampling
from diffjax.core import schedules

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

T = LINEAR.num_timesteps
SHAPE = (256, 2, 2, 1)
# Relative RMS difference allowed: float32 rounding over <= 40 steps measures <= 2e-6.
TOLERANCE = 1e-5


def _grid_indices(num_steps: int, spacing: str) -> list[int]:
    """Our grid [K] as diffusers step indices n = t T - 1, decreasing."""
    ts = sampling.time_grid(LINEAR, num_steps, spacing)
    return [int(n) for n in np.round(np.asarray(ts, np.float64) * T - 1)]


def _scheduler(cls, **config):
    betas = np.asarray(schedules.linear_betas(T), np.float32)
    return cls(num_train_timesteps=T, trained_betas=betas, prediction_type="epsilon", **config)


def _eps_model(alphas_cumprod):
    """The exact eps-prediction for x0 ~ N(MU, S^2): x [B, ...] VP float32 at step index n."""

    def model(x, n):
        alpha_bar = alphas_cumprod[int(n)].double()
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x64 = x.double()
        x0 = MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x64 - alpha * MU)
        return ((x64 - alpha * x0) / sigma).float()

    return model


def _noise():
    return np.array(jax.random.normal(jax.random.PRNGKey(1), SHAPE), np.float32)


def _ours(sampler: str, num_steps: int, spacing: str) -> np.ndarray:
    return _sample(LINEAR, "eps", SHAPE, sampler=sampler, num_steps=num_steps, spacing=spacing)


def _relative_difference(ours, peer):
    return np.linalg.norm(ours - peer) / np.linalg.norm(peer)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_equals_diffusers_ddim_scheduler(spacing):
    scheduler = _scheduler(diffusers.DDIMScheduler, timestep_spacing=spacing, clip_sample=False,
                           set_alpha_to_one=True)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == _grid_indices(10, spacing)
    model = _eps_model(scheduler.alphas_cumprod)
    x = torch.from_numpy(_noise())
    for n in scheduler.timesteps:
        x = scheduler.step(model(x, n), n, x, eta=0.0).prev_sample
    assert _relative_difference(_ours("ddim", 10, spacing), x.numpy()) < TOLERANCE


def _run_karras_style(scheduler, indices):
    """diffusers' Euler / Heun loop in its VE coordinates x / alpha, from our VP noise."""
    scheduler.set_timesteps(timesteps=indices)
    model = _eps_model(scheduler.alphas_cumprod)
    alpha_0 = float(scheduler.alphas_cumprod[indices[0]].double().sqrt())
    x = torch.from_numpy(_noise()) / alpha_0
    for n in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, n), n)
        x = scheduler.step(eps, n, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize("spacing", ["uniform", "leading", "trailing", "quadratic"])
@pytest.mark.parametrize("sampler, peer", [
    ("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler")])
def test_euler_and_heun_equal_diffusers_schedulers(sampler, peer, spacing):
    indices = _grid_indices(10, spacing)
    x = _run_karras_style(_scheduler(getattr(diffusers, peer)), indices)
    assert _relative_difference(_ours(sampler, 10, spacing), x) < TOLERANCE


def _run_dpm_solver(order: int, indices: list[int]):
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, midpoint) on our grid, ending as
    ours does (see the module docstring)."""
    ends_at_t_min = indices[-1] == 0
    scheduler = _scheduler(
        diffusers.DPMSolverMultistepScheduler, solver_order=order, algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="sigma_min" if ends_at_t_min else "zero",
        euler_at_final=ends_at_t_min)
    scheduler.set_timesteps(timesteps=indices[:-1] if ends_at_t_min else indices)
    model = _eps_model(scheduler.alphas_cumprod)
    x = torch.from_numpy(_noise())
    for n in scheduler.timesteps:
        x = scheduler.step(model(x, n), n, x).prev_sample
    if ends_at_t_min:  # our step from n = 0 to sigma = 0: x0_hat there
        alpha_bar = scheduler.alphas_cumprod[0].double()
        x = (x.double() - (1 - alpha_bar).sqrt() * model(x, 0).double()) / alpha_bar.sqrt()
    return x.float().numpy()


@pytest.mark.parametrize("spacing", ["uniform", "leading", "trailing", "quadratic"])
@pytest.mark.parametrize("sampler, order, num_steps", [
    ("dpmpp_2m", 2, 10), ("dpmpp_2m", 2, 20), ("dpmpp_3m", 3, 10), ("dpmpp_3m", 3, 20)])
def test_dpm_solver_equals_diffusers_dpm_solver_multistep(sampler, order, num_steps, spacing):
    x = _run_dpm_solver(order, _grid_indices(num_steps, spacing))
    assert _relative_difference(_ours(sampler, num_steps, spacing), x) < TOLERANCE
