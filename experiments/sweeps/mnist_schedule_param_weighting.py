"""Noise schedule x parameterization x loss weighting on the embedded MNIST digits (2 x 2 x 2).

schedule {linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021)} x parameterization {eps, v
(Salimans & Ho 2022)} x weighting {simple (the MSE of the network's own target), min_snr
(Hang et al. 2023, gamma 5)}, each trained from configs/default.py for the same short budget on
90% of the 5,000 digits (the other 10% give the validation loss), then scored by KID and FID of
500 samples (DDPM ancestral, 100 steps, the same noise for every point) against all 5,000
digits. KID is unbiased at this sample count; FID at 500 samples is biased upward and only
comparable within this table.
"""

BASE_CONFIG = "configs/mnist_ddpm.py"

GRID = {
    "diffusion.schedule": ["linear", "cosine"],
    "diffusion.parameterization": ["eps", "v"],
    "objective.denoising.weighting": ["simple", "min_snr"],
}
SEEDS = [0]

BUDGET = {
    "training.num_steps": 400,               # batch 64: 5.7 epochs of the 4,500 training digits
    "optim.warmup_steps": 40,                # then cosine decay to 0 at step 400 (default.py)
    "training.log_every_steps": 25,
    "training.checkpoint_every_steps": 400,
    "training.sample_every_steps": 0,        # the final grid is still written
    "data.split": "train[:90%]",
    "data.val_split": "train[90%:]",         # 500 held-out digits
    "training.val_every_steps": 100,
    "training.val_num_examples": 256,
}

EVAL = {
    "eval.num_samples": 500,
    "eval.batch_size": 100,
    "sampling.sampler": "ddpm",              # the default config's sampler: ancestral, 100 steps
    "sampling.num_steps": 100,
    "sampling.batch_size": 100,
    "data.split": "train",                   # the reference set: all 5,000 digits (cached stats)
}
