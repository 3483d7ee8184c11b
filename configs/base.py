"""Every field diffjax reads, with its default. Experiment files change only what differs.

The defaults and their meaning live with the code that owns them: the settings in
diffjax/settings.py, and each plug-in's options in its own module (e.g. the U-Net's in
diffjax/models/unet.py, the heun sampler's in diffjax/samplers/edm.py). Plug-in sections hold
the selector (`name`, `diffusion.schedule`, `sampling.sampler`, `eval.metrics`) and one
sub-section per registered part. `python launch.py --mode=dry_run` prints the resolved config.
"""

import ml_collections

from diffjax import plugins, settings


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = plugins.settings_section(settings.DataOptions)
    # images <-> the model's space x: pixels | vae (a diffusers AutoencoderKL folder or a
    # --mode=train_autoencoder workdir, codec.vae.path) | sd_vae (Stable Diffusion's f8 VAE)
    config.codec = plugins.section(plugins.KINDS["codec"], name="pixels")
    # the first stage of a latent model: --mode=train_autoencoder trains this KL autoencoder
    config.autoencoder = plugins.settings_section(settings.AutoencoderOptions)
    # what the network is conditioned on: none | class_label (with label dropout for guidance)
    config.conditioning = plugins.section(plugins.KINDS["conditioning"], name="none")
    config.model = plugins.section(plugins.KINDS["model"], name="unet")  # unet | dit
    # the forward process and the meaning of the network's output, shared by training and
    # sampling: schedule linear | cosine | sigmoid | vp_linear | vp_cosine | ve | edm, or the
    # flow-matching interpolants flow_linear | flow_gvp, each with its options in
    # diffusion.<schedule>; parameterization eps | x0 | v | edm | velocity (flow matching's) |
    # consistency | mean_velocity | x0_latent (a GAN generator's, with a latent_dim-wide z)
    config.diffusion = plugins.section(plugins.KINDS["diffusion"], schedule="linear",
                                       parameterization="eps", sigma_data=0.5, latent_dim=100)
    # denoising (diffusion schedules) | flow_matching (interpolants), options in objective.<name>
    config.objective = plugins.section(plugins.KINDS["objective"], name="denoising")
    # fixed (constant rates) | power (EDM2's power-function profiles); snapshot_every: save the
    # profiles every N steps to WORKDIR/ema_snapshots; sigma_rel: sample/evaluate the EMA of that
    # width reconstructed from them (--mode=reconstruct_ema writes it)
    config.ema = plugins.section(plugins.KINDS["ema"], name="fixed", snapshot_every=0,
                                 sigma_rel=0.0)
    config.optim = plugins.settings_section(settings.OptimOptions)
    config.training = plugins.settings_section(settings.TrainingOptions)
    # sampler ddpm | ddim | euler | heun | dpmpp_2m | dpmpp_3m | pc | ode | flow_euler |
    # flow_heun | flow_sde, options in sampling.<sampler>; the grid (num_steps, spacing, rho) is
    # shared
    config.sampling = plugins.settings_with_parts(settings.SamplingOptions,
                                                  plugins.KINDS["sampling"])
    config.inpaint = plugins.settings_section(settings.InpaintOptions)  # --mode=inpaint
    config.complete = plugins.settings_section(settings.CompleteOptions)  # --mode=complete
    # --mode=eval and the FID during training: metrics fid | kid | inception_score |
    # precision_recall | copy_rate | digit_classes, options in eval.<metric>
    config.eval = plugins.settings_with_parts(settings.EvalOptions, plugins.KINDS["eval"])
    config.mesh = plugins.settings_section(settings.MeshOptions)
    config.benchmark = plugins.settings_section(settings.BenchmarkOptions)
    config.likelihood = plugins.settings_section(settings.LikelihoodOptions)  # --mode=likelihood
    return config
