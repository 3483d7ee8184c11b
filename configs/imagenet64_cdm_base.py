"""Cascaded Diffusion Models' ImageNet 64x64 cascade (Ho et al. 2021), stage 1: the class-
conditional 32x32 base, 279,352,707 params. CDM reaches FID 1.48 at 64x64 with its 32 -> 64 stage
(configs/imagenet64_cdm_sr.py) and no classifier guidance.

The base trains on imagenet_resized/64x64 resized to 32x32 by data.image_size (PIL's
antialiased bilinear), the filter the SR stage downsamples its 64x64 training images with, so
both stages see the same low-resolution images. The network is our ADM U-Net of ADM's 64x64
recipe at 32x32 (192 channels, multipliers (1, 2, 3, 4), 3 blocks, attention at 16 and 8), cosine
schedule, 250 sampling steps. What we lack: CDM's exact per-stage widths, steps and batch sizes
(ours are ADM's), its truncated conditioning augmentation (sampling from a partly noised low
resolution input) and the blur augmentation of its 128 and 256 stages; ImageNet itself is not
on this machine (prepare imagenet_resized/64x64 as configs/imagenet64_adm.py says).
"""

from configs import imagenet64_adm


def get_config():
    config = imagenet64_adm.get_config()
    config.data.image_size = 32
    config.model.unet.attn_resolutions = (16, 8)  # 32 -> 16 -> 8 -> 4
    return config
