"""Stage 2 of the embedded digits' cascade: 14 -> 28 super-resolution (SR3, CDM). The main job's
U-Net and recipe (configs/default.py) at 28x28 takes the bilinearly upsampled 14x14 digit and
its noise level as two more input channels (conditioning.name='low_res'); CDM's Gaussian
conditioning augmentation trains at levels U[0, 0.3] (std on [-1, 1] pixels) and sampling
conditions on 0.1, so the stage repairs the base model's small errors instead of copying them.
550 steps of 32: 1,113,377 params. Sample the cascade with
    python launch.py --mode=sample --workdir runs/mnist_cascade_sr \\
        --config.sampling.cascade="('runs/mnist_cascade_base',)"
"""

from configs import default


def get_config():
    config = default.get_config()
    config.conditioning.name = "low_res"
    config.conditioning.low_res.size = 14
    config.conditioning.low_res.noise_max = 0.3
    config.conditioning.low_res.sampling_noise = 0.1
    config.training.num_steps = 550
    config.training.checkpoint_every_steps = 550
    return config
