"""Autoguidance (Karras et al. 2024): the guided denoiser of two exact Gaussian denoisers against
Tweedie's formula on the guided score, then the Generator on tiny checkpointed runs (w = 1 is the
main model and w = 0 the guide, bit for bit; file names name the guide) and the clear errors."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from diffjax import restore, settings
from diffjax.core import schedules
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.generator import Generator, GuidedParams
from diffjax.objectives import Teacher

LINEAR = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))
MU = 0.3  # the data mean of both Gaussian "models"
X_SHAPE = (3, 3, 1)


class _ExactGaussianNetwork:
    """The exact denoiser of x0 ~ N(MU, var I) (var: the params) as a network of any
    parameterization: it reads t from the discrete schedule's c_noise = t T - 1 and returns the
    parameterization's target of E[x0 | x_t] = MU + alpha var / (alpha^2 var + sigma^2)
    (x_t - alpha MU) and the eps it implies."""

    out_channels = 1
    x_shape = X_SHAPE

    def __init__(self, parameterization):
        self.parameterization = parameterization

    def predict(self, params, x_in, c_noise, cond, train=False):
        t = (c_noise + 1.0) / LINEAR.num_timesteps
        alpha, sigma = LINEAR.alpha(t), LINEAR.sigma(t)
        a, s = alpha[:, None, None, None], sigma[:, None, None, None]
        x_t = x_in  # c_in = 1 for eps, x0 and v
        x0 = MU + a * params["var"] / (a**2 * params["var"] + s**2) * (x_t - a * MU)
        return self.parameterization.target(x0, (x_t - a * x0) / s, alpha, sigma)


def _analytic_generator(w, main="eps", guide="eps", sigma_lo=0.0, sigma_hi=np.inf):
    """A Generator of an exact Gaussian main model with an exact Gaussian guide, of the given
    parameterizations, on the linear schedule."""
    main_p, guide_p = make_parameterization(main), make_parameterization(guide)
    parts = types.SimpleNamespace(network=_ExactGaussianNetwork(main_p), schedule=LINEAR,
                                  parameterization=main_p, codec=None, conditioning=None,
                                  mesh=types.SimpleNamespace(devices=np.zeros(1)))
    sampling = settings.SamplingOptions(guidance="autoguidance", guide_workdir="stub",
                                        guidance_scale=w, guidance_sigma_min=sigma_lo,
                                        guidance_sigma_max=sigma_hi)
    guide_run = Teacher(_ExactGaussianNetwork(guide_p), LINEAR, guide_p, {}, X_SHAPE, 0, None,
                        0, "stub")
    return Generator(parts, sampling, None, None, None, guide=guide_run)


def _tweedie_x0(x_t, alpha, sigma, w, var_main, var_guide):
    """E[x0 | x_t] of the guided score w score_main + (1 - w) score_guide (float64), each score
    -(x_t - alpha MU) / (alpha^2 var + sigma^2), by Tweedie: x0 = (x_t + sigma^2 score) / alpha."""
    a, s = alpha[:, None, None, None], sigma[:, None, None, None]
    precision = w / (a**2 * var_main + s**2) + (1 - w) / (a**2 * var_guide + s**2)
    return (x_t - s**2 * precision * (x_t - a * MU)) / a


TIMES = np.array([0.02, 0.1, 0.3, 0.5, 0.7, 0.9])


def _x0_of_denoiser(gen, params):
    x_t = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (len(TIMES), *X_SHAPE)))
    t = jnp.asarray(TIMES, jnp.float32)
    out = gen.denoiser(params, None)(jnp.asarray(x_t), t)
    alpha, sigma = LINEAR.alpha(t), LINEAR.sigma(t)
    x0 = gen.parameterization.x0_eps(jnp.asarray(x_t), out, alpha, sigma)[0]
    return x_t, np.asarray(alpha, np.float64), np.asarray(sigma, np.float64), np.asarray(x0)


@pytest.mark.parametrize("guide", ["eps", "x0", "v"])
@pytest.mark.parametrize("w", [0.5, 1.0, 1.5, 2.0, 2.5])
def test_guided_denoiser_of_two_gaussians_is_tweedie_on_the_guided_score(w, guide):
    """D_w = D_guide + w (D_main - D_guide) of an eps main model (data variance 0.6) and a guide
    of data variance 0.2 (of any parameterization: re-expressed in eps) is the posterior mean
    that Tweedie's formula gives for the score w score_main + (1 - w) score_guide."""
    var_main, var_guide = 0.6, 0.2
    gen = _analytic_generator(w, guide=guide)
    params = GuidedParams({"var": jnp.float32(var_main)}, {"var": jnp.float32(var_guide)})
    x_t, alpha, sigma, x0 = _x0_of_denoiser(gen, params)
    expected = _tweedie_x0(x_t, alpha, sigma, w, var_main, var_guide)
    np.testing.assert_allclose(x0, expected, rtol=2e-4, atol=2e-4)
    assert w == 1.0 or np.abs(x0 - _tweedie_x0(x_t, alpha, sigma, 1.0, var_main,
                                                 var_guide)).max() > 1e-2  # guidance acts


def test_outside_the_guidance_interval_autoguidance_is_the_main_model():
    var_main, var_guide, lo, hi = 0.6, 0.2, 0.5, 3.0
    gen = _analytic_generator(2.0, sigma_lo=lo, sigma_hi=hi)
    params = GuidedParams({"var": jnp.float32(var_main)}, {"var": jnp.float32(var_guide)})
    x_t, alpha, sigma, x0 = _x0_of_denoiser(gen, params)
    inside = ((sigma / alpha > lo) & (sigma / alpha <= hi))[:, None, None, None]
    assert inside.any() and not inside.all()
    expected = np.where(inside, _tweedie_x0(x_t, alpha, sigma, 2.0, var_main, var_guide),
                        _tweedie_x0(x_t, alpha, sigma, 1.0, var_main, var_guide))
    np.testing.assert_allclose(x0, expected, rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------------------------
# Tiny checkpointed runs: init params perturbed (the init zeroes the output layer), saved as a
# training would save them, without training.


def _fake_run(config, workdir: str, steps=(2,), seed: int = 0) -> str:
    from diffjax.experiment import Experiment
    from diffjax.training.loop import write_config

    exp = Experiment(config, workdir, load_data=False)
    state = exp.init_state()
    ckpt = restore.checkpointer(workdir)
    try:
        for i, step in enumerate(steps):
            leaves, treedef = jax.tree.flatten((state.params, state.ema))
            keys = jax.random.split(jax.random.PRNGKey(100 * seed + i), len(leaves))
            params, ema = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
                                             for p, k in zip(leaves, keys)])
            ckpt.save(step, state.replace(params=params, ema=ema), force=True)
    finally:
        ckpt.close()
    write_config(config, workdir)
    return workdir


def _config(data_dir, **overrides):
    return tiny_config(data_dir, **{"sampling.sampler": "ddim", "sampling.num_steps": 2,
                                    "sampling.num_samples": 8, **overrides})


SMALL_GUIDE = {"model.unet.ch_mult": (1,), "model.unet.attn_resolutions": ()}


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """A: the main run, checkpoints at steps 2 and 4; small: a one-level U-Net at step 2."""
    root = tmp_path_factory.mktemp("autoguidance")
    main = _fake_run(_config(data_dir), str(root / "A"), steps=(2, 4), seed=1)
    small = _fake_run(_config(data_dir, **SMALL_GUIDE), str(root / "small"), seed=2)
    return types.SimpleNamespace(root=root, main=main, small=small)


def _ag(data_dir, guide, w, step=0, **overrides):
    return _config(data_dir, **{"sampling.guidance": "autoguidance",
                                "sampling.guide_workdir": guide, "sampling.guidance_scale": w,
                                "sampling.guide_checkpoint_step": step, **overrides})


def test_autoguidance_at_one_is_the_main_model_and_at_zero_the_guide(data_dir, runs):
    """The same noise: w = 1 samples the main run's images bit for bit, w = 0 its own step-2
    checkpoint's (the guide), w = 2 with the smaller guide neither; the file names differ."""
    from diffjax.experiment import Experiment
    from diffjax.modes.sample import run_name, sample_workdir, sampling_tag

    plain = Experiment(_config(data_dir), runs.main, load_data=False)
    params, step = restore.sampling_params(plain, runs.main)
    assert step == 4
    gen = plain.generator()
    main_images = gen.sample(params, 8, seed=0)[0]
    early = Experiment(_config(data_dir, **{"sampling.checkpoint_steps": (2,)}), runs.main,
                       load_data=False)
    guide_images = gen.sample(restore.sampling_params(early, runs.main)[0], 8, seed=0)[0]
    assert not np.array_equal(main_images, guide_images)

    at_one = Experiment(_ag(data_dir, runs.main, 1.0, step=2), runs.main, load_data=False)
    np.testing.assert_array_equal(at_one.generator().sample(params, 8, seed=0)[0], main_images)
    at_zero = Experiment(_ag(data_dir, runs.main, 0.0, step=2), runs.main, load_data=False)
    np.testing.assert_array_equal(at_zero.generator().sample(params, 8, seed=0)[0],
                                  guide_images)

    guided = Experiment(_ag(data_dir, runs.small, 2.0), runs.main, load_data=False)
    path = sample_workdir(guided)
    assert os.path.basename(path) == "samples_step4_ddim2_ag2_guidesmall-step2_seed0.npz"
    guided_images = np.load(path)["images"]
    assert guided_images.shape == main_images.shape
    assert not np.array_equal(guided_images, main_images)
    assert sampling_tag(plain) == "ddim2"
    assert sampling_tag(at_one) == "ddim2_ag1_guideA-step2"
    assert len({run_name(e, 4) for e in (plain, at_one, at_zero, guided)}) == 4


def test_a_bad_guide_is_refused_naming_the_field(data_dir, runs):
    from diffjax.experiment import Experiment

    root = runs.root

    def refused(guide, match, step=0, **overrides):
        with pytest.raises(ConfigError, match=match):
            Experiment(_ag(data_dir, guide, 2.0, step, **overrides), load_data=False).generator()

    field = r"config.sampling.guide_workdir='.*' is invalid for autoguidance: "
    other_shape = _fake_run(_config(data_dir, **{"data.image_size": 8,
                                                 "model.unet.attn_resolutions": (4,)}),
                            str(root / "shape8"))
    refused(other_shape, field + r"the guiding model makes x of shape \(8, 8, 1\), this run's "
                                 r"x is \(16, 16, 1\)")
    conditional = _fake_run(_config(data_dir, **{"conditioning.name": "class_label"}),
                            str(root / "conditional"))
    refused(conditional, field + r"the guiding model's config.conditioning.name='class_label', "
                                 r"this run's is 'none'")
    other_schedule = _fake_run(_config(data_dir, **{"diffusion.linear.num_timesteps": 500}),
                               str(root / "schedule500"))
    refused(other_schedule, field + r"the guiding model's schedule config.diffusion.linear is "
                                    r".*num_timesteps=500.*, this run's is .*num_timesteps=1000")
    refused("/nowhere/run", r"config.sampling.guide_workdir='/nowhere/run' is invalid: "
                            r"/nowhere/run/config.json does not exist")
    refused(runs.main, r"config.sampling.guide_checkpoint_step=3 is invalid: .*checkpoints "
                       r"holds steps \[2, 4\]", step=3)
    with pytest.raises(ConfigError, match=r"config.sampling.guide_workdir='' is invalid: "
                                          r"guidance='autoguidance' needs the guiding run"):
        Experiment(_ag(data_dir, "", 2.0), load_data=False)
    with pytest.raises(ConfigError, match=r"config.sampling.guidance='cfg' is unknown; allowed: "
                                          r"classifier_free, autoguidance"):
        Experiment(_config(data_dir, **{"sampling.guidance": "cfg"}), load_data=False)
    with pytest.raises(ConfigError, match=r"config.sampling.guide_workdir='runs/A' is invalid: "
                                          r"is used only with guidance='autoguidance'"):
        Experiment(_config(data_dir, **{"sampling.guide_workdir": "runs/A"}), load_data=False)


def test_the_autoguidance_table_evaluates_each_guide_and_weight_once(data_dir, runs, tmp_path):
    """experiments/autoguidance.py with a stub evaluation: one baseline row (w = 1) and one row
    per (guide, w), each evaluated with the guide's settings; a rerun evaluates nothing."""
    from experiments import autoguidance

    seen = []

    def stub(exp):
        s = exp.sampling
        seen.append((s.guidance, os.path.basename(s.guide_workdir), s.guide_checkpoint_step,
                     s.guidance_scale, exp.eval.num_samples))
        return {"fid": float(len(seen)), "nfe": 2, "path": f"eval_{len(seen)}.json"}

    argv = ["--main", runs.main, "--guides", f"{runs.main}@2", runs.small, "--weights", "1", "2",
            "--num_samples", "8", "--out", str(tmp_path)]
    assert autoguidance.main(argv, evaluate_fn=stub) == 0
    assert seen == [("classifier_free", "", 0, 1.0, 8), ("autoguidance", "A", 2, 2.0, 8),
                    ("autoguidance", "small", 0, 2.0, 8)]
    rows = open(tmp_path / "table.md").read().splitlines()[4:]
    assert len(rows) == 3 and rows[0].startswith("| (none) | 1 | 1 |")
    assert autoguidance.main(argv, evaluate_fn=stub) == 0 and len(seen) == 3
