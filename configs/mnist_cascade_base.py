"""Stage 1 of the embedded digits' cascade (Cascaded Diffusion Models, Ho et al. 2021): the
default recipe at 14x14 (data.image_size resizes with PIL's antialiased bilinear), a two-level
U-Net (14 -> 7, attention at 7), 800 steps on train[:90%] with EDM2's power EMA:
701,345 params. Stage 2 is configs/mnist_cascade_sr.py; together they spend the 1,600 steps of the
single-stage configs/mnist_phema.py, which they are compared with (experiments/cascade.py)."""

from configs import mnist_phema


def get_config():
    config = mnist_phema.get_config()
    config.data.image_size = 14
    config.model.unet.ch_mult = (1, 2)  # 14 -> 7
    config.model.unet.attn_resolutions = (7,)
    config.training.num_steps = 800
    config.training.checkpoint_every_steps = 400
    config.ema.snapshot_every = 0
    return config
