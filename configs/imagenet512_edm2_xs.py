"""EDM2-XS (Karras et al. 2024, config G, Table 2), class-conditional ImageNet 512x512 in SD-VAE
latents, 64x64x4: 124,713,125 params (EDM2 Table 2: 125M; its Precond adds 128 for the
uncertainty head, here the objective's own group). FID 3.53 without guidance at post-hoc EMA
sigma_rel 0.135, 63 NFE (NVlabs/edm2 generate_images.py preset edm2-img512-xs-fid).

EDM2's recipe (train_edm2.py preset edm2-img512-xs, training_loop.py): the magnitude-preserving
U-Net (model_channels 128, channel_mult (1, 2, 3, 4), 3 blocks per level, attention at 16 and 8,
no dropout) with forced weight normalisation, EDM's preconditioning with c_noise = ln(sigma) / 4,
the loss with learned uncertainty (objective.name='edm2', ln sigma ~ N(-0.4, 1.0^2)), Adam
betas (0.9, 0.99), no weight decay, no gradient clipping, batch 2048, alpha_ref 0.0120 with the
inverse-square-root decay after t_ref = 70k steps (optim.decay='rsqrt') and a 10 Mimg linear
ramp-up (4,883 steps), 2^31 images (1,048,576 steps), the power-function EMA with
sigma_rel 0.050 and 0.100 and snapshots every 8 Mi images (4,096 steps) for the post-hoc
reconstruction (--mode=reconstruct_ema, then --config.ema.sigma_rel=0.135), and EDM's Heun
sampler with 32 steps on the rho = 7 grid, deterministic. The uncertainty head trains on the same
schedule as the network. Pass the VAE: --config.codec.sd_vae.path=/path/to/sd-vae-ft-mse.

What we lack: EDM2 whitens the latents per channel (raw mean [5.81, 3.25, 0.12, -2.15], std
[4.17, 4.62, 3.71, 3.28], to std 0.5 = sigma_data); the codec's 'manual' normalisation takes one
scale and shift for all channels, so this recipe uses SD's scaling_factor 0.18215 ('config'). To
match EDM2, put diffjax_latent_stats.json with {"channel_mean": [5.81, 3.25, 0.12, -2.15],
"channel_std": [8.34, 9.24, 7.42, 6.56]} (2 x EDM2's std) in the VAE folder and pass
--config.codec.sd_vae.normalization=channel. EDM2 center-crops ImageNet (ADM's crop) where our
loader resizes, trains in float16 (here bfloat16) and zeroes non-finite gradients where we skip
the step.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "imagenet2012"
    config.data.image_size = 512
    config.codec.name = "sd_vae"                # 512x512x3 -> 64x64x4
    config.codec.sd_vae.variant = "ft-mse"      # StabilityVAEEncoder: stabilityai/sd-vae-ft-mse
    config.codec.sd_vae.latent = "sample"       # encode_latents: mean + randn * std
    config.conditioning.name = "class_label"
    config.conditioning.class_label.dropout = 0.0  # EDM2 guides with a separate uncond model
    config.model.name = "edm2"
    config.model.edm2.preset = "xs"             # channels=128, dropout=0.00
    config.training.compute_dtype = "bfloat16"
    config.diffusion.schedule = "edm"           # sigma 0.002 .. 80, rho 7
    config.diffusion.parameterization = "edm"   # Precond: c_skip, c_out, c_in, ln(sigma) / 4
    config.diffusion.sigma_data = 0.5
    config.objective.name = "edm2"
    config.objective.edm2.p_mean = -0.4
    config.objective.edm2.p_std = 1.0
    config.objective.edm2.logvar_lr = 0.0120
    config.objective.edm2.logvar_ref_steps = 70_000
    config.objective.edm2.logvar_warmup_steps = 4_883
    config.optim.name = "adam"
    config.optim.b1, config.optim.b2 = 0.9, 0.99
    config.optim.lr = 0.0120                    # alpha_ref
    config.optim.decay = "rsqrt"
    config.optim.ref_steps = 70_000             # t_ref
    config.optim.warmup_steps = 4_883           # rampup_Mimg=10: 10e6 / 2048
    config.optim.grad_clip = 0.0
    config.training.batch_size = 2048
    config.training.num_steps = 1_048_576       # duration 2048 Mi images / 2048
    config.ema.name = "power"
    config.ema.power.sigma_rels = (0.05, 0.10)  # PowerFunctionEMA std=[0.050, 0.100]
    config.ema.snapshot_every = 4_096           # snapshot_nimg 8 Mi / 2048
    config.sampling.sampler = "heun"            # edm_sampler, S_churn = 0
    config.sampling.num_steps = 32              # 63 NFE
    config.sampling.spacing = "karras"
    config.eval.num_samples = 50_000
    return config
