"""Improved DDPM on CIFAR-10 (Nichol & Dhariwal 2021): 52,546,438 params.

The run flags of openai/improved-diffusion's README for "Unconditional CIFAR-10 with our L_hybrid
objective and cosine noise schedule" (its 50M-parameter, 500K-step checkpoint). Target: FID about
3 and NLL 2.94 bits/dim in the paper (--mode=likelihood with likelihood.bound='vlb': T = 4000
network calls per image).

As theirs: learned reverse variances (`learn_sigma`: 6 output channels, the log-variance
interpolation of eq. 15), L_hybrid = L_simple + 0.001 L_vlb (eq. 16; improved-diffusion's
default RESCALED_MSE: the drawn step's VLB term x T / 1000) and ancestral sampling with the
learned variance. What we lack: their network sees the rescaled step 1000 i / T, ours sees i;
no importance-sampled L_vlb objective (the paper's L_vlb runs).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "cifar10"  # random_flip stays False: their loader never flips
    config.model.unet.ch = 128  # --num_channels 128
    config.model.unet.num_res_blocks = 3  # --num_res_blocks 3
    config.model.unet.attn_resolutions = (16, 8)  # script_util: attention_resolutions "16,8"
    config.model.unet.num_heads = 4  # script_util default num_heads=4
    config.model.unet.use_scale_shift_norm = True  # script_util default use_scale_shift_norm=True
    config.model.unet.dropout = 0.3  # --dropout 0.3
    config.diffusion.schedule = "cosine"  # --noise_schedule cosine (eq. 17, s = 0.008)
    config.diffusion.cosine.num_timesteps = 4000  # --diffusion_steps 4000
    config.optim.lr = 1e-4  # --lr 1e-4, constant (lr_anneal_steps=0)
    config.optim.warmup_steps = 0  # no warmup in improved-diffusion's train_util
    config.optim.grad_clip = 0.0  # no gradient clipping either
    config.training.num_steps = 500_000  # the released checkpoint: 500K steps at batch 128
    config.sampling.num_steps = 4000  # ancestral sampling over all T = 4000 steps
    config.model.unet.learn_sigma = True  # --learn_sigma True (LEARNED_RANGE, eq. 15)
    config.objective.denoising.vlb_weight = 0.001  # L_hybrid's lambda (eq. 16)
    config.sampling.ddpm.variance = "learned"  # sampling with the learned Sigma
    return config
