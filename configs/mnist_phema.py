"""The default recipe (configs/default.py, 1,112,801 params) trained on train[:90%] of the
embedded digits, with EDM2's power-function EMA (sigma_rel 0.05 and 0.10) and its snapshots every
50 steps: one run that the post-hoc EMA sweep, the likelihood on the held-out train[90%:] and
autoguidance (its step-400 checkpoint as the guide) all read. Every checkpoint is kept for that
guide."""

from configs import mnist_ddpm


def get_config():
    config = mnist_ddpm.get_config()
    config.data.split = "train[:90%]"
    config.ema.name = "power"
    config.ema.power.sigma_rels = (0.05, 0.10)  # EDM2 Sec. 3.1
    config.ema.snapshot_every = 50  # 32 snapshots of each profile over 1,600 steps
    config.training.keep_checkpoints = 4  # steps 400, 800, 1200, 1600
    return config
