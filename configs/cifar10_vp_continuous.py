"""DDPM++ cont. (VP) on CIFAR-10 (Song et al. 2021, score_sde): 62,513,667 params, FID 2.55 target.

score_sde's configs/vp/cifar10_ddpmpp_continuous.py: the VP SDE with beta(t) linear from 0.1 to
20 in continuous time, eps-matching loss averaged over pixels (reduce_mean), t ~ U[1e-5, 1],
1.3M steps at batch 128. Its DDPM++ network is approximated by our ADM U-Net at the same size
(nf 128, ch_mult (1, 2, 2, 2), 4 res blocks, attention at 16, BigGAN-style residual up/down,
additive time embedding). Differences: no skip_rescale (1/sqrt(2) on residual sums), no
init_scale=0 on the output layers, and the sampler below uses our ancestral predictor where
score_sde uses Euler-Maruyama (both 1000 steps, no corrector).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.name = "cifar10"
    config.data.random_flip = True  # data.random_flip = True
    config.model.unet.num_res_blocks = 4  # model.num_res_blocks = 4
    config.model.unet.resblock_updown = True  # model.resblock_type = 'biggan'
    config.diffusion.schedule = "vp_linear"  # training.sde = 'vpsde', beta_min 0.1, beta_max 20
    config.training.num_steps = 1_300_000  # training.n_iters = 1300001
    config.sampling.sampler = "pc"  # sampling.method = 'pc'
    config.sampling.pc.corrector_steps = 0  # sampling.corrector = 'none'
    return config
