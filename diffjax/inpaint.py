"""--mode=inpaint: complete masked dataset images with a run's EMA params (RePaint), score them.

Writes WORKDIR/inpaint/NAME.npz (uint8 `original`, `masked`, `completed` [N, H, W, C], `mask`
[N, H, W, 1], `labels`), NAME.png (rows of original | masked | completed) and NAME.json with PSNR
and SSIM of the completions against the originals (dm_pix, on [0, 1] images)."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import data, generate, parallel, sampling, writers
from diffjax.sampling import repaint

SSIM_FILTER_SIZE, SSIM_FILTER_SIGMA = 11, 1.5  # Wang et al. 2004, as dm_pix's defaults


def psnr(a, b) -> np.ndarray:
    """PSNR in dB per image of uint8 [N, H, W, C] arrays (peak 255), via dm_pix on [0, 1]."""
    import dm_pix

    a, b = (jnp.asarray(x, jnp.float32) / 255.0 for x in (a, b))
    return np.asarray(dm_pix.psnr(a, b), np.float64)


def ssim(a, b) -> np.ndarray:
    """SSIM per image of uint8 [N, H, W, C] arrays (Gaussian window 11, sigma 1.5, valid
    filtering, k1 = 0.01, k2 = 0.03, averaged over pixels and channels), via dm_pix on [0, 1]."""
    import dm_pix

    a, b = (jnp.asarray(x, jnp.float32) / 255.0 for x in (a, b))
    return np.asarray(dm_pix.ssim(a, b, max_val=1.0, filter_size=SSIM_FILTER_SIZE,
                                  filter_sigma=SSIM_FILTER_SIGMA), np.float64)


def psnr_missing(a, b, mask) -> np.ndarray:
    """PSNR in dB per image over the missing pixels only (mask [N, H, W, 1] == 0)."""
    missing = np.broadcast_to(np.asarray(mask) == 0, np.shape(a))
    err = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2 / 255.0**2
    mse = (err * missing).sum(axis=(1, 2, 3)) / np.maximum(missing.sum(axis=(1, 2, 3)), 1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def masked_view(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 images with their missing pixels shown mid-grey (128)."""
    return np.where(np.broadcast_to(mask > 0, images.shape), images, 128).astype(np.uint8)


def triplet_grid(original, masked, completed, pad: int = 2) -> np.ndarray:
    """One uint8 grid whose tiles are original | masked | completed side by side."""
    n, h, _, c = original.shape
    sep = np.full((n, h, pad, c), 255, np.uint8)
    tiles = np.concatenate([original, sep, masked, sep, completed], axis=2)
    return writers.image_grid(tiles, pad=3 * pad)


class Inpainter:
    """RePaint completion of [B, H, W, C] images under masks, jitted and sharded like Generator."""

    def __init__(self, generator: generate.Generator, config):
        self.gen, self.config = generator, config
        s = config.sampling
        self.ts = sampling.time_grid(generator.schedule, s.num_steps, s.spacing, rho=s.rho)
        self._fn = None
        levels = repaint.jump_schedule(len(self.ts), config.inpaint.jump_length,
                                       config.inpaint.resample)
        self.nfe = sum(b < a for a, b in zip(levels[:-1], levels[1:]))  # denoising steps

    def _compile(self):
        gen, cfg = self.gen, self.config
        dcfg, icfg, s = cfg.diffusion, cfg.inpaint, cfg.sampling
        shard = parallel.batch_sharding(gen.mesh)

        def run(params, key, images, masks, labels):
            k_noise, k_sample = jax.random.split(key)
            noise = jax.lax.with_sharding_constraint(
                jax.random.normal(k_noise, images.shape, jnp.float32), shard)
            pred = sampling.Prediction(gen.denoiser(params, labels), gen.schedule,
                                       dcfg.parameterization, s.clip_denoised, dcfg.sigma_data)
            x, _ = repaint.repaint(pred, self.ts, noise, images, masks, k_sample,
                                   jump_length=icfg.jump_length, resample=icfg.resample,
                                   ddpm_variance=s.ddpm_variance, temperature=s.temperature)
            return sampling.to_uint8(x)

        repl = parallel.replicated(gen.mesh)
        return jax.jit(run, in_shardings=(None, repl, shard, shard, shard),  # params: any layout
                       out_shardings=shard)

    def complete(self, params, images, masks, labels, key) -> np.ndarray:
        """images: global [B, H, W, C] float32 in [-1, 1], masks [B, H, W, 1], labels [B] (sharded
        on the batch axis). Returns the uint8 completions [B, H, W, C] as numpy."""
        if self._fn is None:
            self._fn = self._compile()
        return parallel.to_host(self._fn(params, key, images, masks, labels))


def inpaint_from_workdir(config, workdir: str) -> str:
    """Completes config.inpaint.num_images images of split config.inpaint.split; returns the path
    of the JSON with PSNR/SSIM. Class-conditional models are conditioned on the true labels
    (with config.sampling.guidance_scale)."""
    from tqdm import tqdm

    from diffjax.sample import params_tag, restore_sampling_params
    from diffjax.train import Experiment

    exp = Experiment(config, workdir, load_data=False)
    params, step = restore_sampling_params(exp, config, workdir)  # EMA, or an ensemble
    gen = generate.Generator(exp.model, exp.schedule, config, exp.mesh, exp.image_shape,
                             exp.num_classes)
    inpainter = Inpainter(gen, config)
    icfg, s = config.inpaint, config.sampling
    source, _ = data.load_source(config.data.name, icfg.split, config.data.data_dir)
    n_dev = exp.mesh.devices.size  # per-call batch: sampling.batch_size, or fewer if that is all
    batch = min(gen.batch, -(-icfg.num_images // n_dev) * n_dev)
    pipeline = data.Pipeline(source, batch, s.seed, jax.process_index(), jax.process_count(),
                             config.data.image_size, False, False, exp.num_classes)
    out = {"original": [], "completed": [], "mask": [], "labels": []}
    bar = tqdm(total=icfg.num_images, unit="img", disable=jax.process_index() != 0)
    start = time.perf_counter()
    for i in range(-(-icfg.num_images // batch)):
        examples = pipeline.batch(i)
        seed = [s.seed, i, jax.process_index()]
        mask = repaint.make_masks(icfg.mask, examples["image"].shape, icfg.mask_fraction, seed)
        images, masks, labels = parallel.to_global((examples["image"], mask, examples["label"]),
                                                   exp.mesh)
        key = jax.random.fold_in(jax.random.PRNGKey(s.seed), i)
        completed = inpainter.complete(params, images, masks, labels, key)
        keep = min(batch, icfg.num_images - i * batch)
        out["completed"].append(completed[:keep])
        out["original"].append(parallel.to_host(sampling.to_uint8(images))[:keep])
        out["mask"].append(parallel.to_host(masks)[:keep])
        out["labels"].append(parallel.to_host(labels)[:keep])
        bar.update(keep)
    bar.close()
    seconds = time.perf_counter() - start
    out = {k: np.concatenate(v) for k, v in out.items()}
    out["masked"] = masked_view(out["original"], out["mask"])
    metrics = {"psnr": psnr(out["completed"], out["original"]),
               "ssim": ssim(out["completed"], out["original"]),
               "psnr_missing": psnr_missing(out["completed"], out["original"], out["mask"])}
    result = {
        "step": int(step), "num_images": int(icfg.num_images), "mask": icfg.mask,
        "mask_fraction": icfg.mask_fraction, "jump_length": icfg.jump_length,
        "resample": icfg.resample, "num_steps": s.num_steps, "spacing": s.spacing,
        "nfe": inpainter.nfe, "seconds": round(seconds, 2),
        **{k: float(np.mean(v)) for k, v in metrics.items()},
        "per_image": {k: [round(float(x), 4) for x in v] for k, v in metrics.items()},
    }
    directory = os.path.join(exp.workdir, "inpaint")
    cfg = f"_cfg{s.guidance_scale:g}" if s.guidance_scale != 1.0 else ""
    name = (f"inpaint_step{step}_{icfg.mask}_repaint{s.num_steps}_j{icfg.jump_length}"
            f"r{icfg.resample}{cfg}{params_tag(config)}_seed{s.seed}")
    path = os.path.join(directory, name + ".json")
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        np.savez(os.path.join(directory, name + ".npz"), **out)
        writers.save_grid(triplet_grid(out["original"], out["masked"], out["completed"])[None],
                          os.path.join(directory, name + ".png"))
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"inpainted {icfg.num_images} images ({icfg.mask}, {inpainter.nfe} NFE each) from "
              f"step {step}: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, PSNR on the "
              f"missing pixels {result['psnr_missing']:.2f} dB; wrote {path}")
    return path
