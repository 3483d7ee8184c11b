"""--mode=complete: super-resolution or denoising of dataset images with a run's unconditional
EMA params, by posterior sampling (diffjax.samplers.measurement: PiGDM or DPS) on the run's
sampler and grid, scored like inpainting.

Each image x gives an observation y = A x + complete.noise * n (A: factor x factor block means,
or the identity); the restoration is one posterior sample. Writes WORKDIR/complete/NAME.npz
(uint8 `original`, `observed` (A^+ y: each block filled with its mean), `restored`), NAME.png
(rows of original | observed | restored) and NAME.json with PSNR and SSIM of the restorations
and, as the baseline, of the observations themselves (A^+ y; bilinear upsampling of y too).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import data, parallel, progress, restore, samplers, writers
from diffjax.codecs import to_uint8
from diffjax.errors import ConfigError
from diffjax.evaluation.image_quality import psnr, ssim
from diffjax.experiment import Experiment
from diffjax.inpainting import triplet_grid
from diffjax.samplers.measurement import Operator, posterior_denoiser
from diffjax.samplers.prediction import Prediction


def operator(exp) -> Operator:
    """The observation of config.complete, checked against the image size."""
    c = exp.complete
    op = (Operator("box_downsample", c.factor) if c.task == "super_resolution"
          else Operator("identity"))
    try:
        op.check((1, *exp.image_shape))
    except ValueError as e:
        raise ConfigError(f"config.complete.factor={c.factor} is invalid: {e}") from None
    return op


class Completer:
    """Posterior sampling of [B, H, W, C] images from their observations, jitted and sharded
    like sampling. gen: a Generator; options: settings.CompleteOptions; op: an Operator."""

    def __init__(self, gen, options, op: Operator, sigma_data: float):
        self.gen, self.options, self.op, self.sigma_data = gen, options, op, sigma_data
        self._fn = None

    def _compile(self):
        gen, o, op = self.gen, self.options, self.op
        shard = parallel.batch_sharding(gen.mesh)

        def run(params, key, images, labels):
            k_obs, k_noise, k_sample = jax.random.split(key, 3)
            clean = op.forward(images)
            y = clean + o.noise * jax.random.normal(k_obs, clean.shape, jnp.float32)
            cond = gen.conditioning.from_labels(labels)
            pred = Prediction(gen.denoiser(params, cond), gen.schedule, gen.parameterization)
            den = posterior_denoiser(pred, y, op, o.noise, o.method, self.sigma_data,
                                     o.dps_scale)
            noise = jax.lax.with_sharding_constraint(
                jax.random.normal(k_noise, images.shape, jnp.float32), shard)
            x, _ = samplers.sample(den, gen.schedule, "x0", noise, k_sample,
                                   sampler=gen.sampler.name, grid=gen.grid,
                                   options=gen.sampler_options, clip=gen.clip)
            return to_uint8(x), to_uint8(op.pseudo_inverse(y)), y

        return jax.jit(run, in_shardings=(None, parallel.replicated(gen.mesh), shard, shard),
                       out_shardings=(shard, shard, shard))

    def restore(self, params, images, labels, key):
        """images: global [B, H, W, C] float32 in [-1, 1]. Returns (restored uint8, observed
        A^+ y uint8, y float32) as numpy."""
        if self._fn is None:
            self._fn = self._compile()
        return tuple(parallel.to_host(v) for v in self._fn(params, key, images, labels))


def complete_workdir(exp) -> str:
    """Restores and scores complete.num_images images; returns the JSON's path."""
    if exp.codec.name != "pixels":
        raise ConfigError(f"--mode=complete observes pixels, but config.codec.name="
                          f"{exp.codec.name!r}; allowed: codec.name='pixels'")
    c, s = exp.complete, exp.sampling
    op = operator(exp)
    params, step = restore.sampling_params(exp, exp.workdir)
    completer = Completer(exp.generator(), c, op, float(exp.config.diffusion.sigma_data))
    source, _ = data.load_source(exp.data.name, c.split, exp.data.data_dir)
    n_dev = exp.mesh.devices.size
    batch = min(completer.gen.batch, -(-c.num_images // n_dev) * n_dev)
    pipeline = data.Pipeline(source, batch, s.seed, jax.process_index(), jax.process_count(),
                             exp.data.image_size, False, False, exp.num_classes)
    out = {"original": [], "observed": [], "restored": [], "bilinear": []}
    bar = progress.bar(c.num_images, "img", "complete")
    start = time.perf_counter()
    for i in range(-(-c.num_images // batch)):
        examples = pipeline.batch(i)
        images, labels = parallel.to_global((examples["image"], examples["label"]), exp.mesh)
        key = jax.random.fold_in(jax.random.PRNGKey(s.seed), i)
        restored, observed, y = completer.restore(params, images, labels, key)
        keep = min(batch, c.num_images - i * batch)
        out["restored"].append(restored[:keep])
        out["observed"].append(observed[:keep])
        out["original"].append(parallel.to_host(to_uint8(images))[:keep])
        b, h, w, ch = restored.shape
        out["bilinear"].append(np.asarray(to_uint8(jax.image.resize(
            jnp.asarray(y), (b, h, w, ch), "linear")))[:keep])
        bar.update(keep)
    bar.close()
    seconds = time.perf_counter() - start
    out = {k: np.concatenate(v) for k, v in out.items()}
    scores = {"psnr": psnr(out["restored"], out["original"]),
              "ssim": ssim(out["restored"], out["original"]),
              "psnr_observed": psnr(out["observed"], out["original"]),
              "ssim_observed": ssim(out["observed"], out["original"])}
    if c.task == "super_resolution":
        scores.update(psnr_bilinear=psnr(out["bilinear"], out["original"]),
                      ssim_bilinear=ssim(out["bilinear"], out["original"]))
    result = {"step": int(step), "task": c.task, "factor": c.factor, "noise": c.noise,
              "method": c.method, "dps_scale": c.dps_scale, "num_images": int(c.num_images),
              "split": c.split, "sampler": s.sampler, "num_steps": s.num_steps,
              "seconds": round(seconds, 2),
              **{k: float(np.mean(v)) for k, v in scores.items()},
              "per_image": {k: [round(float(x), 4) for x in v] for k, v in scores.items()}}
    directory = os.path.join(exp.workdir, "complete")
    task = f"sr{c.factor}" if c.task == "super_resolution" else "denoise"
    name = (f"complete_step{step}_{task}_noise{c.noise:g}_{c.method}_{s.sampler}{s.num_steps}"
            f"{restore.params_tag(s, restore.posthoc_sigma_rel(exp))}_seed{s.seed}")
    path = os.path.join(directory, name + ".json")
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        np.savez(os.path.join(directory, name + ".npz"),
                 **{k: v for k, v in out.items() if k != "bilinear"})
        writers.save_grid(triplet_grid(out["original"], out["observed"], out["restored"])[None],
                          os.path.join(directory, name + ".png"))
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        base = (f"bilinear {result['psnr_bilinear']:.2f} dB, " if "psnr_bilinear" in result
                else "")
        print(f"{c.task} of {c.num_images} images ({c.method}, noise {c.noise:g}) from step "
              f"{step}: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}; the "
              f"observations: {base}A^+ y {result['psnr_observed']:.2f} dB, SSIM "
              f"{result['ssim_observed']:.4f}; wrote {path}")
    return path


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    complete_workdir(Experiment(config, workdir, load_data=False))
