"""Denoising diffusion GAN (DDGAN, Xiao et al. 2022) on the embedded digits: a 2-step
generator, each step a conditional GAN on (x_{t-1}, x_t) pairs with a time-conditioned
discriminator. Sampled in its 2 steps (--config.sampling.sampler=ddgan, num_steps=2).

The paper's choices: the VP SDE of beta 0.1..20 at T equal steps, a generator predicting x0
from (x_t, z, t) with the latent z feeding every residual block (here: the time embedding's
scale-shift modulation), the non-saturating loss with R1 gamma = 0.02, Adam betas (0.5, 0.9)
for both, D at 1.25e-4. What differs (CIFAR-10: T = 4, NCSN++ 48M generator, batch 256, G at
1.6e-4, 1,800 epochs, EMA 0.9999): T = 2 (the paper's T = 2 ablation, FID 4.08 vs 3.75 at
T = 4), the default config's U-Net with scale-shift norm and a 100-wide latent embedding
(1,220,673 params), a 32-channel discriminator, batch 64, G at 2e-4, EMA 0.999, and this short
run (700 steps, the students' 30-minute budget on 2 CPU cores).
"""

from configs import mnist_ddpm


def get_config():
    config = mnist_ddpm.get_config()
    config.diffusion.schedule = "vp_linear"
    config.diffusion.parameterization = "x0_latent"
    config.diffusion.latent_dim = 100
    config.model.unet.use_scale_shift_norm = True
    config.objective.name = "ddgan"
    config.objective.ddgan.num_steps = 2
    config.objective.ddgan.disc_channels = 32
    config.optim.lr = 2e-4
    config.optim.b1 = 0.5
    config.optim.b2 = 0.9
    config.optim.warmup_steps = 0
    config.training.num_steps = 700
    config.training.checkpoint_every_steps = 350
    config.training.sample_every_steps = 700
    config.sampling.sampler = "ddgan"
    config.sampling.num_steps = 2
    return config
