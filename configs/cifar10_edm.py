"""EDM on CIFAR-10, unconditional (Karras et al. 2022): 56,525,187 params, FID 1.97 at 35 NFE.

Config F of EDM Table 2 (NVlabs/edm train.py defaults with --arch=ddpmpp --cond=0): the EDM
preconditioning and loss (Table 1), ln sigma ~ N(-1.2, 1.2^2), lambda(sigma) = (sigma^2 +
sigma_data^2) / (sigma sigma_data)^2, sigma_data = 0.5, and the deterministic Heun sampler with
18 steps on the rho = 7 grid (35 NFE). The schedule's sigma_min 0.002, sigma_max 80, rho 7 and
diffusion.p_mean -1.2, p_std 1.2, sigma_data 0.5 are already base.py's defaults.

The network is our ADM U-Net at the size of EDM's DDPM++ (SongUNet: 128 channels, channel_mult
(2, 2, 2), 4 blocks, attention at 16, residual up/down, additive embedding); it lacks SongUNet's
skip scaling. EDM's non-leaking augmentation (--augment=0.12, App. F.2) is ours (core.augment):
x-flip, integer translation, isotropic and anisotropic scaling and rotation, each with p = 0.12,
their 7 labels mapped linearly onto the noise level's embedding as EDM's map_augment does; EDM
also flips vertically (yflip), flips horizontally in half of all images whatever p, translates
by fractions of a pixel and has 9 labels.
EDM ramps the EMA half-life up (ema_rampup_ratio 0.05); we use our EMA warmup instead.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "cifar10"  # random_flip stays False: --xflip=False
    config.data.augment_p = 0.12  # --augment=0.12
    config.model.unet.ch_mult = (2, 2, 2)  # channel_mult=[2, 2, 2]: 32 -> 16 -> 8
    config.model.unet.num_res_blocks = 4  # SongUNet num_blocks=4
    config.model.unet.dropout = 0.13  # --dropout=0.13
    config.model.unet.resblock_updown = True  # UNetBlock down/up resampling in the res block
    config.diffusion.schedule = "edm"  # sigma(t) on EDM's rho grid (eq. 5)
    config.diffusion.parameterization = "edm"  # EDMPrecond: c_skip, c_out, c_in, c_noise
    config.objective.denoising.weighting = "edm"  # EDMLoss: lambda(sigma), eq. 8
    config.objective.denoising.time_sampling = "lognormal"  # P_mean = -1.2, P_std = 1.2 (Table 1)
    config.optim.lr = 1e-3  # --lr=10e-4
    config.optim.warmup_steps = 19_531  # lr_rampup_kimg=10000: 10 Mimg / 512
    config.optim.grad_clip = 0.0  # EDM does not clip (it zeroes non-finite grads)
    config.training.batch_size = 512  # --batch=512
    config.training.num_steps = 390_625  # --duration=200 Mimg / 512
    config.ema.fixed.decays = (0.5 ** (512 / 500_000),)  # --ema=0.5 Mimg half-life: 0.99929
    config.ema.fixed.warmup = True  # stands in for EDM's EMA half-life ramp-up
    config.sampling.sampler = "heun"  # EDM Algorithm 1 (deterministic: s_churn = 0)
    config.sampling.num_steps = 18  # --steps=18: 2 * 18 - 1 = 35 NFE
    config.sampling.spacing = "karras"  # eq. 5 with rho = 7 (sampling.rho)
    return config
