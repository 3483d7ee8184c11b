"""Consistency distillation (CD, Song et al. 2023) of a trained diffjax run on the embedded
digits, sampled in 1, 2 or 4 steps (--config.sampling.num_steps=1|2|4). Name the teacher:

    python launch.py --config configs/mnist_ddpm.py --workdir runs/mnist_ddpm  # the teacher
    python launch.py --config configs/mnist_cd.py --workdir runs/mnist_cd \\
        --config.objective.consistency_distillation.teacher=runs/mnist_ddpm

CD's CIFAR-10 settings: N = 18 EDM levels, Heun teacher steps, target EMA mu = 0.95; pseudo-
Huber (iCT) instead of LPIPS. The student's levels 0.01 .. 80 lie inside the DDPM
teacher's 0.01 .. 157 (linear betas). The student is that DDPM's U-Net (1,112,801
params) with the consistency parameterization, initialised afresh (the teacher predicts eps, so
its weights mean something else). A step costs 1 + 2 + 1 forward passes (student, Heun, target).
"""

from configs import mnist_ddpm


def get_config():
    config = mnist_ddpm.get_config()
    config.diffusion.schedule = "edm"
    config.diffusion.edm.sigma_min = 0.01
    config.diffusion.parameterization = "consistency"
    config.objective.name = "consistency_distillation"
    config.optim.lr = 1e-3
    config.training.num_steps = 1200  # 4 passes a step: the 30-minute student budget on 2 cores
    config.sampling.sampler = "consistency"
    config.sampling.num_steps = 2
    return config
