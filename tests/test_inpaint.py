"""Data completion: masks, RePaint's schedule, exactness of the known pixels, the Gaussian
conditional, PSNR/SSIM against a direct numpy reference, and --mode=inpaint end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers as sampling
from diffjax.core import schedules
from diffjax.evaluation import image_quality
from diffjax.samplers import repaint
from diffjax.samplers.prediction import Prediction

LINEAR = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))
MU, S, RHO = 0.3, 0.5, 0.9  # two pixels per image, correlation RHO


def test_masks():
    shape = (3, 28, 28, 1)
    box = repaint.make_masks("center_box", shape, 0.25)
    assert box.shape == (3, 28, 28, 1) and (box[:, 7:21, 7:21] == 0).all()
    assert box.sum() == 3 * (28 * 28 - 14 * 14)  # the missing box is 14 x 14 = 25%
    left = repaint.make_masks("left_half", shape)
    assert (left[:, :, :14] == 0).all() and (left[:, :, 14:] == 1).all()
    pixels = repaint.make_masks("random_pixels", (200, 28, 28, 3), 0.3, seed=1)
    # 156,800 Bernoulli(0.3) draws: sd 0.0012; 5 sd.
    assert (1 - pixels.mean()) == pytest.approx(0.3, abs=0.006)
    with pytest.raises(ValueError, match=r"config.inpaint.mask='ring' is unknown; allowed: "):
        repaint.make_masks("ring", shape)


def test_jump_schedule_is_repaints():
    """Lugmayr et al. 2022, Sec. 4.2 with K = 6 levels, jump length 2, 2 passes: at levels 2 and 0
    the walk goes back up 2 levels once. NFE = K + (r - 1) j (#jump points) = 6 + 1 * 2 * 2."""
    levels = repaint.jump_schedule(6, jump_length=2, resample=2)
    assert levels == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert sum(b < a for a, b in zip(levels, levels[1:])) == 10
    assert repaint.jump_schedule(4, 10, 10) == [3, 2, 1, 0, -1]  # no room to jump: plain descent


def correlated_denoiser(schedule):
    """Exact eps for x0 ~ N(MU, S^2 [[1, RHO], [RHO, 1]]) on [B, 1, 2, 1] images:
    E[x0 | x_t] = MU + alpha C (alpha^2 C + sigma^2 I)^-1 (x_t - alpha MU), diagonal in the basis
    (1, 1) / sqrt 2, (1, -1) / sqrt 2 with eigenvalues S^2 (1 +- RHO)."""
    basis = jnp.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)
    eig = S**2 * jnp.array([1.0 + RHO, 1.0 - RHO])

    def denoiser(x_t, t):
        alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        x = x_t.reshape(-1, 2)
        coords = (x - alpha * MU) @ basis
        x0 = MU + (alpha * eig / (alpha**2 * eig + sigma**2) * coords) @ basis.T
        return ((x - alpha * x0) / sigma).reshape(x_t.shape)

    return denoiser


def _complete(num_steps, jump_length, resample, batch=4000):
    rng = np.random.default_rng(0)
    chol = np.linalg.cholesky(S**2 * np.array([[1.0, RHO], [RHO, 1.0]]))
    data = (MU + rng.standard_normal((batch, 2)) @ chol.T).reshape(batch, 1, 2, 1)
    mask = np.zeros((batch, 1, 2, 1), np.float32)
    mask[:, :, 0] = 1.0  # pixel 0 known, pixel 1 missing
    pred = Prediction(correlated_denoiser(LINEAR), LINEAR, "eps")
    ts = sampling.time_grid(LINEAR, num_steps)
    run = jax.jit(lambda n, k: repaint.repaint(pred, ts, n, jnp.asarray(data, jnp.float32), mask,
                                               k, jump_length=jump_length, resample=resample))
    x, nfe = run(jax.random.normal(jax.random.PRNGKey(1), data.shape), jax.random.PRNGKey(2))
    return np.asarray(data, np.float32).reshape(batch, 2), np.asarray(x).reshape(batch, 2), nfe


def test_repaint_keeps_known_pixels_and_approaches_the_gaussian_conditional():
    """The missing pixel given the known one is N(MU + RHO (x_k - MU), S^2 (1 - RHO^2)).
    Plain replacement (resample = 1) is known to be inconsistent: it ignores most of the
    correlation. RePaint's setting (250 steps, jump 10, 10 passes) nearly recovers it."""
    true_var = S**2 * (1 - RHO**2)
    for resample, slope_range, var_range in [(1, (0.5, 0.7), (1.6, 2.2)),
                                             (10, (0.85, 0.95), (0.85, 1.15))]:
        data, x, nfe = _complete(250, 10, resample)
        assert nfe == 250 + (resample - 1) * 10 * 24
        np.testing.assert_array_equal(x[:, 0], data[:, 0])  # the known pixel, bit for bit
        slope = np.polyfit(data[:, 0], x[:, 1], 1)[0]
        resid = x[:, 1] - (MU + RHO * (data[:, 0] - MU))
        # The slope's standard error is 0.22 / (0.5 sqrt(4000)) = 0.007; measured slopes are
        # 0.62 (replacement) and 0.86 (RePaint), residual variances 1.9x and 1.0x the true one.
        assert slope_range[0] < slope < slope_range[1]
        assert var_range[0] < resid.var() / true_var < var_range[1]
        assert abs(resid.mean()) < 0.02


def numpy_ssim(a, b, max_val=1.0, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """SSIM (Wang et al. 2004) in float64 with an explicit 2-D Gaussian window over every valid
    position (no separable filtering), averaged over positions and channels. a, b: [H, W, C]."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    window = np.outer(g, g) / np.outer(g, g).sum()
    views = [np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), (size, size),
                                                      axis=(0, 1)) for x in (a, b)]
    mean = lambda v: np.einsum("hwcij,ij->hwc", v, window)  # noqa: E731
    mu_a, mu_b = mean(views[0]), mean(views[1])
    var_a = mean(views[0] ** 2) - mu_a**2
    var_b = mean(views[1] ** 2) - mu_b**2
    cov = mean(views[0] * views[1]) - mu_a * mu_b
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1)
                                                           * (var_a + var_b + c2))
    return ssim_map.mean()


def test_psnr_and_ssim_match_a_direct_numpy_reference():
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (4, 28, 28, 3)).astype(np.uint8)
    noisy = np.clip(original + rng.normal(0, 20, original.shape), 0, 255).astype(np.uint8)
    mse = ((original.astype(np.float64) - noisy) / 255.0) ** 2
    np.testing.assert_allclose(image_quality.psnr(noisy, original),
                               10 * np.log10(1.0 / mse.mean(axis=(1, 2, 3))), rtol=1e-5)
    expected = [numpy_ssim(n / 255.0, o / 255.0) for n, o in zip(noisy, original)]
    np.testing.assert_allclose(image_quality.ssim(noisy, original), expected, rtol=1e-4)  # float32
    assert image_quality.ssim(original, original) == pytest.approx(1.0, abs=1e-6)
    mask = np.ones((4, 28, 28, 1), np.float32)
    mask[:, :, :14] = 0
    only_missing = np.where(mask > 0, original, noisy)
    np.testing.assert_allclose(image_quality.psnr_missing(only_missing, original, mask),
                               10 * np.log10(1 / mse[:, :, :14].mean(axis=(1, 2, 3))), rtol=1e-6)


def test_inpaint_mode_end_to_end(data_dir, tmp_path):
    """--mode=inpaint on a tiny untrained U-Net: outputs exist, known pixels are the originals."""
    from conftest import tiny_config

    from diffjax import checkpoint
    from diffjax.experiment import Experiment
    from diffjax.modes import inpaint

    config = tiny_config(data_dir, **{
        "sampling.num_steps": 3, "inpaint.num_images": 5, "inpaint.jump_length": 1,
        "inpaint.resample": 2, "inpaint.mask": "random_pixels", "inpaint.mask_fraction": 0.5})
    workdir = str(tmp_path / "run")
    exp = Experiment(config, workdir, load_data=False)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(1, exp.init_state())
    ckpt.close()
    path = inpaint.inpaint_workdir(exp)
    with open(path) as f:
        result = json.load(f)
    assert result["nfe"] == 3 + 1 * 1 * 2 and result["num_images"] == 5
    assert np.isfinite(result["psnr"]) and -1 <= result["ssim"] <= 1
    out = np.load(path.replace(".json", ".npz"))
    assert out["completed"].shape == out["original"].shape == (5, 16, 16, 1)
    known = np.broadcast_to(out["mask"] > 0, out["original"].shape)
    np.testing.assert_array_equal(out["completed"][known], out["original"][known])
    assert os.path.exists(path.replace(".json", ".png"))
