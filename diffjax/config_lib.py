"""Config files and runs' saved configs: loading a config file, naming a missing field, merging a
run's config.json under new overrides, and migrating the config.json of a run made before the
plug-in layout. (Reading fields into typed parts is diffjax.experiment's job alone.)"""

from __future__ import annotations

import copy

import ml_collections

_UNET = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "num_heads",
         "head_channels", "resblock_updown", "use_scale_shift_norm")
_DENOISING = ("weighting", "min_snr_gamma", "time_sampling", "p_mean", "p_std",
              "curriculum_steps", "curriculum_t_min_start", "curriculum_t_max_start",
              "curriculum_p_mean_start", "curriculum_p_std_start")
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_SCHEDULE_SECTIONS = ("linear", "cosine", "sigmoid", "vp_linear", "vp_cosine", "ve", "edm")

# Pre-plug-in dotted key -> its new dotted key(s) (one old value can feed several parts' options).
RENAMED: dict[str, tuple[str, ...]] = {
    **{f"model.{k}": (f"model.unet.{k}",) for k in _UNET},
    **{f"diffusion.{k}": (f"objective.denoising.{k}",) for k in _DENOISING},
    **{f"sampling.{k}": (f"sampling.euler.{k}", f"sampling.heun.{k}") for k in _CHURN},
    "model.class_dropout": ("conditioning.class_label.dropout",),
    "model.class_conditional": ("conditioning.name",),
    "diffusion.num_timesteps": tuple(f"diffusion.{s}.num_timesteps"
                                     for s in ("linear", "cosine", "sigmoid")),
    "diffusion.beta_start": ("diffusion.linear.beta_start", "diffusion.sigmoid.beta_start"),
    "diffusion.beta_end": ("diffusion.linear.beta_end", "diffusion.sigmoid.beta_end"),
    "diffusion.vp_beta_min": ("diffusion.vp_linear.beta_min",),
    "diffusion.vp_beta_max": ("diffusion.vp_linear.beta_max",),
    "diffusion.logsnr_min": ("diffusion.vp_cosine.logsnr_min",),
    "diffusion.logsnr_max": ("diffusion.vp_cosine.logsnr_max",),
    "diffusion.sigma_min": ("diffusion.ve.sigma_min", "diffusion.edm.sigma_min"),
    "diffusion.sigma_max": ("diffusion.ve.sigma_max", "diffusion.edm.sigma_max"),
    "diffusion.rho": ("diffusion.edm.rho",),
    "training.ema_decay": ("ema.fixed.decays",),
    "training.ema_decays": ("ema.fixed.decays",),
    "training.ema_warmup": ("ema.fixed.warmup",),
    "sampling.eta": ("sampling.ddim.eta",),
    "sampling.temperature": ("sampling.ddpm.temperature", "sampling.ddim.temperature"),
    "sampling.ddpm_variance": ("sampling.ddpm.variance",),
    "sampling.snr": ("sampling.pc.snr",),
    "sampling.corrector_steps": ("sampling.pc.corrector_steps",),
    "sampling.ode_solver": ("sampling.ode.solver",),
    "sampling.ode_rtol": ("sampling.ode.rtol",),
    "sampling.ode_atol": ("sampling.ode.atol",),
    "eval.kid": ("eval.metrics",),
    "eval.inception_score": ("eval.metrics",),
    "eval.precision_recall": ("eval.metrics",),
    "eval.kid_subsets": ("eval.kid.subsets",),
    "eval.kid_subset_size": ("eval.kid.subset_size",),
    "eval.is_splits": ("eval.inception_score.splits",),
    "eval.pr_k": ("eval.precision_recall.k",),
}


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """The get_config() of a config file (a path). A file in a `configs/` directory imports
    configs.base, so that directory's parent is put on sys.path first."""
    import importlib.util
    import os
    import sys

    parent = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if os.path.basename(os.path.dirname(os.path.abspath(path))) == "configs" and (
            parent not in sys.path):
        sys.path.insert(0, parent)
    spec = importlib.util.spec_from_file_location("_diffjax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def missing_field(config, key: str) -> str | None:
    """None when `config` has the dotted field `key` (e.g. 'optim.lr'); else what is missing:
    "config.optim has no field 'lrr'; its fields are: ...", and where a renamed key now is."""
    node = config
    for i, part in enumerate(key.split(".")):
        if not hasattr(node, "keys") or part not in node:
            parent = ".".join(["config", *key.split(".")[:i]])
            fields = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
            message = f"{parent} has no field {part!r}; its fields are: {fields}"
            if key in RENAMED:
                message += (f". It was renamed when parts became plug-ins: use "
                            f"{' and '.join('config.' + k for k in RENAMED[key])}")
            return message
        node = node[part]
    return None


def _pop(tree: dict, dotted: str, default=None):
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.get(p, {})
    return node.pop(leaf, default) if isinstance(node, dict) else default


def _put(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def set_field(config, dotted: str, value) -> None:
    """config[a][b][c] = value for dotted = 'a.b.c' (a KeyError where a parent is missing; the
    ConfigDict's TypeError for a value of the wrong type)."""
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def is_legacy(saved: dict) -> bool:
    """Whether a run's config.json predates the plug-in layout (it has model.ch or
    training.ema_decay)."""
    return "ch" in saved.get("model", {}) or "ema_decay" in saved.get("training", {})


def migrate_legacy(saved: dict) -> dict:
    """A pre-plug-in run's config.json (a dict) in the current layout, with the same meaning:
    every key of RENAMED moved; model.class_conditional -> conditioning.name; training.ema_decay
    and ema_decays -> ema.fixed.decays; eval.kid / inception_score / precision_recall ->
    eval.metrics. Current configs pass through unchanged."""
    if not is_legacy(saved):
        return saved
    new = copy.deepcopy(saved)
    conditional = _pop(new, "model.class_conditional", False)
    _put(new, "conditioning.name", "class_label" if conditional else "none")
    decays = [_pop(new, "training.ema_decay", 0.9999), *(_pop(new, "training.ema_decays") or [])]
    _put(new, "ema.name", "fixed")
    _put(new, "ema.fixed.decays", decays)
    wanted = [m for m in ("kid", "inception_score", "precision_recall") if _pop(new, f"eval.{m}")]
    _put(new, "eval.metrics", ["fid", *wanted])
    _put(new, "objective.name", "denoising")
    schedule = new.get("diffusion", {}).get("schedule", "linear")
    for old, targets in RENAMED.items():
        if targets[0] in ("conditioning.name", "ema.fixed.decays", "eval.metrics"):
            continue
        value = _pop(new, old, None)
        if old.startswith("diffusion.") and targets[0].split(".")[1] in _SCHEDULE_SECTIONS:
            # a schedule's option: only the schedule the run used ever read it
            targets = tuple(t for t in targets if t.split(".")[1] == schedule)
        if value is not None:
            for target in targets:
                _put(new, target, value)
    return new


def merge_saved(config, saved: dict, overridden: set[str]):
    """A copy of `config` with every field of `saved` (a run's config.json, migrated from the
    pre-plug-in layout when it is in it) written over it, except the dotted keys in
    `overridden`. JSON lists become tuples again; fields that `saved` lacks (added to diffjax
    after that run) keep `config`'s values."""
    saved = migrate_legacy(saved)
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


