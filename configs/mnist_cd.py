"""Consistency distillation (CD, Song et al. 2023) of a trained diffjax run on the embedded
digits, sampled in 1, 2 or 4 steps (--config.sampling.num_steps=1|2|4). Name the teacher:

    python launch.py --config configs/mnist_cd.py --workdir runs/mnist_cd \\
        --config.objective.consistency_distillation.teacher=runs/default

CD's CIFAR-10 settings: N = 18 EDM levels, Heun teacher steps, target EMA mu = 0.95; pseudo-
Huber (iCT) instead of LPIPS. The student's levels 0.01 .. 80 lie inside the default DDPM
teacher's 0.01 .. 157 (linear betas). The student is the default config's U-Net (1,112,801
params) with the consistency parameterization, initialised afresh (the teacher predicts eps, so
its weights mean something else). A step costs 1 + 2 + 1 forward passes (student, Heun, target).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.diffusion.schedule = "edm"
    config.diffusion.edm.sigma_min = 0.01
    config.diffusion.parameterization = "consistency"
    config.objective.name = "consistency_distillation"
    config.optim.lr = 1e-3
    config.training.num_steps = 1200  # 4 passes a step: the 30-minute student budget on 2 cores
    config.sampling.sampler = "consistency"
    config.sampling.num_steps = 2
    return config
