"""SiT-XL/2 (Ma et al. 2024), class-conditional ImageNet 256x256 in SD-VAE latents, 32x32x4:
675,129,632 params as DiT/SiT count them (674,834,720 trained + the fixed position embedding),
118.6 forward Gflops. FID 2.06 (paper Table 4/9): CFG 1.5 with the SDE sampler at 250 steps,
guidance on 3 of the 4 latent channels as the released sampling code does (forward_with_cfg).

SiT's recipe: linear interpolant, velocity prediction, t ~ U[0, 1], learned sigma output
(8 channels, unused by the loss), 1000 classes with 10% label dropout, AdamW lr 1e-4, no weight
decay, batch 256, 7M steps, EMA 0.9999, no warmup, no gradient clipping; sampling: Euler-Maruyama
SDE, diffusion w(t) = sigma(t), 250 steps, last step 'Mean' of size 0.04.

Latents: Stable Diffusion's VAE (config.codec.name='sd_vae', f8, 4 channels, scale 0.18215),
z sampled from the posterior each step as SiT's train.py does. No weights can be downloaded by
diffjax: pass the folder you have, e.g. --config.codec.sd_vae.path=/data/sd-vae-ft-ema (the Hub's
stabilityai/sd-vae-ft-ema layout: config.json + diffusion_pytorch_model.safetensors).

What we lack: prepare imagenet2012 with `python -m diffjax.data prepare --name imagenet2012`
(needs the ImageNet download). SiT's ImageNet loader center-crops (ADM's center_crop_arr) where
ours resizes. SiT encodes on the fly, as we do by default; config.codec.sd_vae.cache=True caches
the moments instead (about 84 GB for ImageNet with flips, float32).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "imagenet2012"
    config.data.image_size = 256
    config.data.random_flip = True              # SiT: RandomHorizontalFlip
    config.codec.name = "sd_vae"                # 256x256x3 -> 32x32x4 (stabilityai/sd-vae-ft-ema)
    config.codec.sd_vae.variant = "ft-ema"      # --config.codec.sd_vae.path=<its folder>
    config.conditioning.name = "class_label"
    config.conditioning.class_label.dropout = 0.1   # class_dropout_prob 0.1
    config.model.name = "dit"
    config.model.dit.size = "XL/2"
    config.model.dit.learn_sigma = True         # SiT keeps DiT's 8 output channels
    config.training.compute_dtype = "bfloat16"
    config.objective.name = "flow_matching"     # path_type Linear, prediction velocity
    config.objective.flow_matching.time_sampling = "uniform"
    config.diffusion.schedule = "flow_linear"
    config.diffusion.parameterization = "velocity"
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0
    config.optim.decay = "constant"
    config.training.batch_size = 256
    config.training.num_steps = 7_000_000
    config.ema.fixed.decays = (0.9999,)
    config.ema.fixed.warmup = False
    config.sampling.sampler = "flow_sde"        # SDE, Euler-Maruyama
    config.sampling.num_steps = 250
    config.sampling.flow_sde.diffusion_form = "sigma"
    config.sampling.flow_sde.last_step = "mean"
    config.sampling.flow_sde.last_step_size = 0.04
    config.sampling.clip_denoised = False
    config.sampling.guidance_scale = 1.5
    config.sampling.guidance_channels = 3
    config.eval.num_samples = 50_000
    return config
