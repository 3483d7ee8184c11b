"""DDPM on CIFAR-10 (Ho et al. 2020, Sec. 4 and App. B): 35,746,307 params, FID 3.17 target."""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "cifar10"
    config.data.random_flip = True  # App. B: random horizontal flips
    config.model.unet.ch = 128  # App. B
    config.model.unet.ch_mult = (1, 2, 2, 2)  # 32 -> 16 -> 8 -> 4
    config.model.unet.num_res_blocks = 2
    config.model.unet.attn_resolutions = (16,)  # self-attention at 16x16
    config.model.unet.dropout = 0.1
    config.diffusion.schedule = "linear"  # beta 1e-4 -> 0.02, T = 1000
    config.diffusion.linear.num_timesteps = 1000
    config.diffusion.parameterization = "eps"  # L_simple
    config.objective.denoising.weighting = "simple"
    config.optim.name = "adam"
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.training.batch_size = 128
    config.training.num_steps = 800_000
    config.ema.fixed.decays = (0.9999,)
    config.sampling.sampler = "ddpm"
    config.sampling.num_steps = 1000
    return config
