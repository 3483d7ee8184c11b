"""ADM, class-conditional ImageNet 64x64 (Dhariwal & Nichol 2021): 295,900,035 params, FID 2.07.

The 64x64 model of openai/guided-diffusion (README flags; paper Table 11 hyperparameters): 192
channels, channel multipliers (1, 2, 3, 4), 3 res blocks, attention at 32, 16 and 8 with 64
channels per head, BigGAN up/down-sampling, adaptive group norm (scale-shift), dropout 0.1, cosine
schedule with T = 1000, class-conditional, batch 2048, lr 3e-4, 540K steps, EMA 0.9999. FID 2.07
is without guidance, sampled with 250 steps.

Data: TFDS `imagenet_resized/64x64` (box-downsampled ImageNet of Chrabaszcz et al. 2017, with
labels; `downsampled_imagenet/64x64` has no labels). Prepare it once with
`python -m diffjax.data prepare --name imagenet_resized/64x64` (needs the ImageNet download).
What we lack: learned variances (6 output channels, L_hybrid) and the classifier for classifier
guidance; the sampler below uses fixed variances.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "imagenet_resized/64x64"
    config.data.random_flip = True  # guided-diffusion's loader: random_flip=True
    config.model.unet.ch = 192  # --num_channels 192
    config.model.unet.ch_mult = (1, 2, 3, 4)  # channel_mult for 64x64: 64 -> 32 -> 16 -> 8
    config.model.unet.num_res_blocks = 3  # --num_res_blocks 3
    config.model.unet.attn_resolutions = (32, 16, 8)  # --attention_resolutions 32,16,8
    config.model.unet.head_channels = 64  # --num_head_channels 64
    config.model.unet.resblock_updown = True  # --resblock_updown True
    config.model.unet.use_scale_shift_norm = True  # --use_scale_shift_norm True
    config.conditioning.name = "class_label"  # --class_cond True
    config.diffusion.schedule = "cosine"  # --noise_schedule cosine, --diffusion_steps 1000
    config.optim.lr = 3e-4  # Table 11: learning rate 3e-4
    config.optim.warmup_steps = 0  # guided-diffusion: no warmup ...
    config.optim.grad_clip = 0.0  # ... and no gradient clipping
    config.training.batch_size = 2048  # Table 11: batch size 2048
    config.training.num_steps = 540_000  # Table 11: 540K iterations
    config.training.compute_dtype = "bfloat16"  # --use_fp16 True (mixed precision)
    config.sampling.num_steps = 250  # --timestep_respacing 250
    return config
