"""Stage 1 of the embedded digits' cascade (Cascaded Diffusion Models, Ho et al. 2021): the main
job's recipe (configs/default.py: cosine, v, batch 32, EMA 0.999) at 14x14 (data.image_size
resizes with PIL's antialiased bilinear), a two-level U-Net (14 -> 7, attention at 7), 550 steps:
701,345 params.
Stage 2 is configs/mnist_cascade_sr.py; together they spend the 1,100 steps of the single-stage
main job, which they are compared with (experiments/cascade.py). That comparison also trains
this base for 2,200 steps (--base_steps), about the main job's training time with stage 2's."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.image_size = 14
    config.model.unet.ch_mult = (1, 2)  # 14 -> 7
    config.model.unet.attn_resolutions = (7,)
    config.training.num_steps = 550
    config.training.checkpoint_every_steps = 550
    return config
