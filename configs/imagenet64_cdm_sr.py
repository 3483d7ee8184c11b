"""Cascaded Diffusion Models' ImageNet 64x64 cascade (Ho et al. 2021), stage 2: class-
conditional 32 -> 64 super-resolution, 295,906,947 params; after configs/imagenet64_cdm_base.py.

The ADM 64x64 U-Net (configs/imagenet64_adm.py) takes the bilinearly upsampled 32x32 image and
its noise level as 4 more input channels (conditioning.name='low_res' with the class label
alongside, class_dropout 0.1 for guidance). CDM's Gaussian conditioning augmentation: training
noises the low-resolution input at a level s ~ U[0, 0.5] (std on [-1, 1] pixels) that the
network is told; sampling conditions on s = 0.1 (CDM searched this level per stage). Sample the
cascade with
    python launch.py --workdir runs/cdm_sr --mode=eval \\
        --config.sampling.cascade="('runs/cdm_base',)"
What we lack is listed in configs/imagenet64_cdm_base.py.
"""

from configs import imagenet64_adm


def get_config():
    config = imagenet64_adm.get_config()
    config.conditioning.name = "low_res"
    config.conditioning.low_res.size = 32
    config.conditioning.low_res.noise_max = 0.5
    config.conditioning.low_res.sampling_noise = 0.1
    config.conditioning.low_res.class_conditional = True
    config.conditioning.low_res.class_dropout = 0.1
    return config
