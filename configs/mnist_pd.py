"""Progressive distillation (PD, Salimans & Ho 2022) of a trained diffjax run on the embedded
digits, one round per run: the student learns in one DDIM step what the teacher does in two.

    python launch.py --config configs/mnist_ddpm.py --workdir runs/mnist_ddpm  # the teacher
    # round 1 from that DDPM (its DDIM on the 8-step trailing grid) to 4 steps
    python launch.py --config configs/mnist_pd.py --workdir runs/pd4 \\
        --config.objective.progressive_distillation.teacher=runs/mnist_ddpm
    # round 2 resumes from round 1: 4 -> 2 steps, then 2 -> 1
    python launch.py --config configs/mnist_pd.py --workdir runs/pd2 \\
        --config.objective.progressive_distillation.teacher=runs/pd4 \\
        --config.objective.progressive_distillation.student_steps=2 --config.sampling.num_steps=2

PD's choices: the student starts from the teacher's EMA params, truncated-SNR weighting
max(SNR, 1), DDIM (eta 0) on the grid that halves the teacher's. What differs: the mnist_ddpm
teacher predicts eps, so round 1's student keeps the eps parameterization (its init is the
teacher's network) rather than PD's v; a v teacher (diffusion.parameterization='v') distils in v.
The default config's U-Net (1,112,801 params), 400 steps of 64 per round (three rounds to one
step fit the 30-minute student budget), Adam 1e-4 (PD: 5e-5), EMA 0.999.
"""

from configs import mnist_ddpm


def get_config():
    config = mnist_ddpm.get_config()
    config.objective.name = "progressive_distillation"
    config.objective.progressive_distillation.student_steps = 4
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.training.num_steps = 400
    config.training.checkpoint_every_steps = 200
    config.training.sample_every_steps = 400
    config.sampling.sampler = "ddim"
    config.sampling.spacing = "trailing"
    config.sampling.num_steps = 4
    return config
