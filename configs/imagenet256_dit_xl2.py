"""DiT-XL/2 (Peebles & Xie 2023), class-conditional ImageNet 256x256 in SD-VAE latents, 32x32x4:
675,129,632 params as DiT counts them (674,834,720 trained + the fixed position embedding),
118.6 forward Gflops (Table 4). FID 2.27 (Table 4): classifier-free guidance 1.5 on 3 of the 4
latent channels, 250 DDPM steps.

DiT's recipe: DDPM's linear schedule over 1000 steps (beta 1e-4 to 0.02), eps prediction with a
learned-sigma output (8 channels), 10% label dropout, AdamW lr 1e-4, no weight decay, batch 256,
7M steps, EMA 0.9999, no warmup, no gradient clipping, horizontal flips. Latents: Stable
Diffusion's VAE (config.codec.name='sd_vae', scale 0.18215), z sampled from the posterior each
step (DiT's train.py: vae.encode(x).latent_dist.sample().mul_(0.18215)); DiT samples with the
ft-ema or ft-mse decoder. Pass the weights you have: --config.codec.sd_vae.path=/path/to/folder.

What we lack: DiT trains the sigma channels with iDDPM's L_vlb (L_hybrid) and samples with the
learned variance; here the sigma channels are unused by the loss and sampling uses the posterior
variance ('small'). ImageNet needs `python -m diffjax.data prepare --name imagenet2012`; DiT's
loader center-crops where ours resizes.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "imagenet2012"
    config.data.image_size = 256
    config.data.random_flip = True
    config.codec.name = "sd_vae"                # 256x256x3 -> 32x32x4
    config.codec.sd_vae.variant = "ft-ema"      # --config.codec.sd_vae.path=<its folder>
    config.conditioning.name = "class_label"
    config.conditioning.class_label.dropout = 0.1
    config.model.name = "dit"
    config.model.dit.size = "XL/2"
    config.model.dit.learn_sigma = True
    config.training.compute_dtype = "bfloat16"
    config.diffusion.schedule = "linear"        # 1000 steps, beta 1e-4 -> 0.02
    config.diffusion.parameterization = "eps"
    config.optim.name = "adamw"
    config.optim.weight_decay = 0.0
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0
    config.optim.decay = "constant"
    config.training.batch_size = 256
    config.training.num_steps = 7_000_000
    config.ema.fixed.decays = (0.9999,)
    config.ema.fixed.warmup = False
    config.sampling.sampler = "ddpm"
    config.sampling.num_steps = 250
    config.sampling.clip_denoised = False
    config.sampling.guidance_scale = 1.5
    config.sampling.guidance_channels = 3
    config.eval.num_samples = 50_000
    return config
