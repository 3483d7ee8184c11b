"""Improved consistency training (iCT, Song & Dhariwal 2023) from scratch on the embedded digits,
sampled in 1, 2 or 4 steps (--config.sampling.num_steps=1|2|4).

iCT's recipe: EDM levels 0.002 .. 80 (rho 7), the boundary-condition parameterization, pseudo-
Huber loss with c = 0.00054 sqrt(784) = 0.0151, lambda = 1 / (s_{i+1} - s_i), lognormal level
pairs (P_mean -1.1, P_std 2.0), N(k) from 10 to 1280 over the run, no EMA teacher. What differs
from the paper (CIFAR-10: NCSN++ 56M, batch 1024, RAdam 1e-4, 400k steps, dropout 0.3, EMA
0.99993): the default config's U-Net (1,112,801 params), batch 64, Adam 1e-3 with cosine
decay, dropout 0.1 and EMA 0.999 over this short run. The same network as configs/default.py,
so the two costs compare: a step here is one forward pass more (the target).
"""

from configs import mnist_ddpm


def get_config():
    config = mnist_ddpm.get_config()
    config.diffusion.schedule = "edm"
    config.diffusion.parameterization = "consistency"
    config.objective.name = "consistency_training"
    config.model.unet.dropout = 0.1
    config.optim.lr = 1e-3
    config.training.num_steps = 1600
    config.sampling.sampler = "consistency"
    config.sampling.num_steps = 2
    return config
