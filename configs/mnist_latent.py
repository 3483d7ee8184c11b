"""Latent diffusion on the embedded digits (LDM, Rombach et al. 2022), both stages in one file:

  python launch.py --config configs/mnist_latent.py --mode=train_autoencoder --workdir runs/ae
  python launch.py --config configs/mnist_latent.py --workdir runs/ldm \\
      --config.codec.vae.path=runs/ae

Stage 1, config.autoencoder: a KL autoencoder (LDM's AutoencoderKL design) with f = 4, 28x28x1 ->
7x7x4, trained on train[:90%] with L1 + KL (weight 1e-6) and a PatchGAN from half-way, scored on
the held-out train[90%:]. Stage 2: DDPM (eps, linear schedule) with a one-level U-Net on the
latents, z ~ q(z|x) drawn each step from the cached posterior moments, normalised to unit
variance by the autoencoder's measured std (LDM's rule). Sampling decodes to images; FID/KID are
computed on the decoded images against the 5,000 digits. Budgets and the measured numbers are in
README.md ("Latent diffusion").
"""

from configs import mnist_ddpm


def get_config():
    config = mnist_ddpm.get_config()
    ae = config.autoencoder
    ae.block_out_channels = (32, 64, 64)   # f = 4: 28 -> 14 -> 7
    ae.layers_per_block = 1
    ae.latent_channels = 4
    ae.norm_num_groups = 16
    ae.reconstruction = "l1"
    ae.kl_weight = 1e-6
    ae.disc_weight = 0.5
    ae.disc_start_step = 400
    ae.num_steps = 800                     # batch 64 (training.batch_size)
    ae.lr = 1e-3
    ae.disc_layers = 2
    ae.disc_channels = 32
    ae.split = "train[:90%]"
    ae.eval_split = "train[90%:]"
    ae.eval_num_images = 500
    config.codec.name = "vae"
    config.codec.vae.path = ""             # --config.codec.vae.path=<the autoencoder's workdir>
    config.codec.vae.cache = True          # encode the 5,000 digits once, not every step
    config.model.unet.ch = 96
    config.model.unet.ch_mult = (1,)       # 7x7 latents: one level, attention at 7
    config.model.unet.num_res_blocks = 2
    config.model.unet.attn_resolutions = (7,)
    return config
