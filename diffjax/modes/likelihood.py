"""--mode=likelihood: bits/dim of held-out images under a run's EMA params.

config.likelihood.bound picks the bound:
  ode  the probability-flow ODE's change of variables (score_sde App. D.2; diffjax.core.likelihood)
       with Hutchinson probes or the exact divergence, on uniformly dequantized images
       (bits/dim = -log2 p(x) / D + 7 for x in [-1, 1]); any schedule, and the parameterizations
       with a PF-ODE. x0_hat is not clipped (the drift must be smooth).
  vlb  the discrete-time DDPM bound (Ho et al. 2020 eq. 5; diffjax.core.vlb): T network calls
       per image, the discretized Gaussian decoder (so no dequantization), x0_hat clipped to
       [-1, 1] as improved-diffusion's calc_bpd_loop; discrete schedules only.
A class-conditional model is scored on the images' labels: log p(x | y).
Writes WORKDIR/likelihood/<name>.json and prints a one-line summary.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import data, parallel, progress, restore
from diffjax.core import likelihood as lik
from diffjax.core import vlb
from diffjax.errors import ConfigError
from diffjax.experiment import Experiment
from diffjax.generator import network_model_fn
from diffjax.samplers import ode
from diffjax.samplers.grids import sigma_ve, t_from_sigma_ve
from diffjax.samplers.prediction import Prediction, initial_x

ODE_PARAMETERIZATIONS = ("eps", "x0", "v", "edm", "velocity")  # a denoiser D(x; sigma) each
VLB_SCHEDULES = ("linear", "cosine", "sigmoid")  # the discrete beta tables
SCORE_SDE_T_MIN = 1e-5  # score_sde's likelihood eps; also the denoising objective's t_min


def _has_variance(network) -> bool:
    return any(name == "variance" for name, _ in network.extra_outputs)


def vlb_variance(exp) -> str:
    """The reverse variance of the VLB: config.likelihood.variance, or for 'auto' 'learned'
    where the network outputs a variance that its objective trains (L_hybrid's vlb_weight > 0;
    DiT recipes output one that no loss trains), else the ddpm sampler's."""
    chosen = exp.likelihood.variance
    if chosen != "auto":
        return chosen
    trained = getattr(getattr(exp.objective, "options", None), "vlb_weight", 0.0) > 0
    if _has_variance(exp.network) and trained:
        return "learned"
    return exp.repaint_options.variance


def ode_t_range(exp) -> tuple[float, float]:
    """(t_min, t_max) of the ODE of exp's schedule and config.likelihood.t_min (see t_range)."""
    return t_range(exp.schedule, exp.likelihood.t_min)


def t_range(schedule, t_min: float = -1.0) -> tuple[float, float]:
    """(t_min, t_max) of the ODE: t_min (-1: 1/T, step 0, on discrete schedules; 0 on VE/EDM
    ones, whose sigma(0) = sigma_min > 0; score_sde's 1e-5 elsewhere) up to the schedule's t_max.
    Discrete schedules interpolate log-SNR between their steps (the network sees fractional
    step indices there, as the ode sampler's)."""
    lowest = 1.0 / schedule.num_timesteps if schedule.is_discrete else 0.0
    if t_min == -1.0:
        if schedule.is_discrete:
            t_min = lowest
        elif not schedule.variance_preserving and not schedule.is_interpolant:
            t_min = 0.0
        else:
            t_min = SCORE_SDE_T_MIN
    t_max = float(getattr(schedule, "t_max", 1.0))
    if not lowest <= t_min < t_max:
        raise ConfigError(f"config.likelihood.t_min={t_min} is invalid: the ODE runs from t_min "
                          f"up to t_max={t_max}, so it must be in [{lowest:g}, {t_max}) "
                          f"(-1: the schedule's default)")
    if sigma_ve(schedule, [t_min])[0] <= 0:
        raise ConfigError(f"config.likelihood.t_min={t_min} is invalid: sigma(t_min) = 0 on "
                          f"config.diffusion.schedule={schedule.name!r}; use t_min > 0 "
                          f"(-1: score_sde's {SCORE_SDE_T_MIN})")
    return t_min, t_max


def check_likelihood(exp) -> None:
    """Raises ConfigError where config.likelihood's bound cannot score this model."""
    o, name = exp.likelihood, exp.parameterization.name
    if exp.codec.name != "pixels":
        raise ConfigError(f"config.codec.name={exp.codec.name!r}: --mode=likelihood reports "
                          f"bits/dim of 8-bit images, which needs a pixel-space model; allowed: "
                          f"config.codec.name='pixels'")
    if name not in ODE_PARAMETERIZATIONS:
        raise ConfigError(f"config.diffusion.parameterization={name!r} has no probability-flow "
                          f"ODE or reverse-process mean to score (config.likelihood.bound="
                          f"{o.bound!r}); allowed: {', '.join(ODE_PARAMETERIZATIONS)}")
    dims = int(np.prod(exp.x_shape))
    if o.bound == "ode":
        if o.probe == "exact" and dims > lik.EXACT_MAX_DIMS:
            raise ConfigError(f"config.likelihood.probe='exact' is invalid for x of shape "
                              f"{tuple(exp.x_shape)}: its {dims} dimensions cost {dims} JVPs per "
                              f"ODE step; allowed up to {lik.EXACT_MAX_DIMS} (3x32x32), else "
                              f"probe='rademacher' or 'gaussian'")
        ode_t_range(exp)
        return
    if not exp.schedule.is_discrete:
        raise ConfigError(f"config.likelihood.bound='vlb' needs a discrete-time schedule, but "
                          f"config.diffusion.schedule={exp.schedule.name!r}; allowed: "
                          f"{', '.join(VLB_SCHEDULES)} (or bound='ode')")
    variance = vlb_variance(exp)
    if variance == "learned" and not _has_variance(exp.network):
        raise ConfigError(f"config.likelihood.variance='learned' needs a network with a "
                          f"variance output (config.model.{exp.config.model.name}.learn_sigma"
                          f"=True); allowed here: small, large")


def _model_output(exp, params, cond, with_extras: bool):
    """(x_t, t [B]) -> the network's output through the parameterization (c_in, c_noise),
    averaged over an ensemble's members; with_extras keeps the extra channels (the variance)."""
    model_fn = network_model_fn(exp.network, exp.parameterization, exp.schedule, params,
                                with_extras)
    return lambda x_t, t: model_fn(x_t, t, cond)


def ode_nll(schedule, parameterization, denoiser, options, t_min: float, t_max: float,
            probe_sharding=None):
    """The PF-ODE's nll(x [B,H,W,C], probe key) -> (-log p(x) nats [B], NFE: int32, -1 for a
    failed solve), x at t_min. denoiser(x_t [B,H,W,C], t [B]) -> the network output in
    `parameterization` (unclipped). options: settings.LikelihoodOptions (probe, num_probes,
    solver, rtol, atol). The prior is what the samplers draw x(t_max) from (initial_x: N(0, I)
    on VP schedules, N(0, sigma(t_max)^2 I) otherwise). probe_sharding: of the probes
    [K, B, ...]."""
    o = options
    sigma_lo, sigma_hi = (float(s) for s in sigma_ve(schedule, [t_min, t_max]))
    with jax.ensure_compile_time_eval():
        alpha_lo = float(schedule.alpha(jnp.float32(t_min)))
        alpha_hi = float(schedule.alpha(jnp.float32(t_max)))
        prior_std = float(initial_x(schedule, jnp.ones(()), t_max)) / alpha_hi
    solver = ode.make_solver(o.solver)
    pred = Prediction(denoiser, schedule, parameterization, clip=None)
    denoise_ve = lambda y, sigma: pred.denoise_ve(  # noqa: E731
        y, t_from_sigma_ve(schedule, sigma))

    def nll(x, key):
        probes = lik.draw_probes(key, o.probe, o.num_probes, x.shape)
        if probes is not None and probe_sharding is not None:
            probes = jax.lax.with_sharding_constraint(probes, probe_sharding)
        log_p, steps, ok = lik.ode_log_likelihood(
            denoise_ve, x, alpha_lo=alpha_lo, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
            prior_std=prior_std, probes=probes, solver=solver, rtol=o.rtol, atol=o.atol,
            max_steps=ode.MAX_STEPS)
        nfe = (1 if solver.tableau.fsal else 0) + ode.evals_per_step(solver) * steps
        return -log_p, jnp.where(ok, nfe, -1).astype(jnp.int32)

    return nll


def ode_program(exp, batch: int):
    """jit(params, levels [B,H,W,C], labels [B], key) -> (bits/dim [B], NFE; -1: a failed solve)."""
    o = exp.likelihood
    t_min, t_max = ode_t_range(exp)
    sharding = parallel.batch_sharding(exp.mesh)
    probe_sharding = jax.sharding.NamedSharding(
        exp.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))

    def run(params, levels, labels, key):
        k_dequant, k_probe = jax.random.split(key)
        cond = exp.conditioning.true({"label": labels})
        nll = ode_nll(exp.schedule, exp.parameterization,
                      _model_output(exp, params, cond, False), o, t_min, t_max, probe_sharding)
        return lik.image_bits_per_dim(levels, k_dequant, o.dequantization,
                                      lambda x: nll(x, k_probe))

    repl = parallel.replicated(exp.mesh)
    return jax.jit(run, in_shardings=(None, sharding, sharding, repl),
                   out_shardings=(sharding, repl))


def vlb_program(exp, batch: int):
    """jit(params, levels, labels, key) -> ({'total', 'prior', 'decoder'}: bits/dim [B] each)."""
    schedule, param, net = exp.schedule, exp.parameterization, exp.network
    tables = vlb.PosteriorTables.from_betas(schedule.betas)
    variance = vlb_variance(exp)
    dims = int(np.prod(exp.x_shape))
    sharding = parallel.batch_sharding(exp.mesh)

    def run(params, levels, labels, key):
        x0 = levels / 127.5 - 1.0
        output = _model_output(exp, params, exp.conditioning.true({"label": labels}),
                               with_extras=True)

        def model(x_t, index):
            t = schedule.t_from_index(index)
            main, extras = net.split_output(output(x_t, t))
            x0_hat = param.x0_eps(x_t, main, schedule.alpha(t), schedule.sigma(t))[0]
            return jnp.clip(x0_hat, -1.0, 1.0), extras.get("variance")

        nats = vlb.vlb_nats(model, x0, tables, key, variance, "discretized")
        to_bits = lambda v: v / (dims * math.log(2.0))  # noqa: E731
        return {k: to_bits(nats[k]) for k in ("total", "prior", "decoder")}

    repl = parallel.replicated(exp.mesh)
    return jax.jit(run, in_shardings=(None, sharding, sharding, repl), out_shardings=sharding)


def _batches(exp, batch: int):
    """Yields (start, uint8 levels, labels) of the first likelihood.num_images images of
    likelihood.split in dataset order, as global arrays of `batch` (the last padded by
    wrapping around)."""
    o, d = exp.likelihood, exp.data
    source, _ = data.load_source(d.name, o.split, d.data_dir)
    pipeline = data.Pipeline(source, batch, 0, jax.process_index(), jax.process_count(),
                             d.image_size, False, d.in_memory, exp.num_classes)
    if o.num_images > pipeline.num_examples:
        raise ConfigError(f"config.likelihood.num_images={o.num_images} is invalid: "
                          f"config.likelihood.split={o.split!r} holds {pipeline.num_examples} "
                          f"images")
    for start in range(0, o.num_images, batch):
        index = np.arange(start, start + batch) % pipeline.num_examples
        local = index[pipeline.offset:pipeline.offset + pipeline.local_batch]
        images, labels = pipeline.examples(local)
        yield start, parallel.to_global((images.astype(np.float32), labels), exp.mesh)


def _describe(exp) -> dict:
    o = exp.likelihood
    if o.bound == "ode":
        t_min, t_max = ode_t_range(exp)
        return {"dequantization": o.dequantization, "probe": o.probe,
                "num_probes": 0 if o.probe == "exact" else o.num_probes, "solver": o.solver,
                "rtol": o.rtol, "atol": o.atol, "t_min": t_min, "t_max": t_max,
                "clip_denoised": False}
    return {"dequantization": "none (discretized decoder)", "variance": vlb_variance(exp),
            "num_timesteps": exp.schedule.num_timesteps, "clip_denoised": True}


def run_name(exp, step: int) -> str:
    """likelihood_step<S>_<bound and its settings>_n<N>_seed<seed>."""
    o = exp.likelihood
    if o.bound == "ode":
        probe = "exact" if o.probe == "exact" else f"{o.probe}{o.num_probes}"
        tag = f"ode_{o.solver}_rtol{o.rtol:g}_{probe}_{o.dequantization}"
        if o.t_min != -1.0:
            tag += f"_tmin{o.t_min:g}"
    else:
        tag = f"vlb_{vlb_variance(exp)}"
    split = o.split.replace("[", "").replace("]", "").replace(":", "-").replace("%", "pct")
    params = restore.params_tag(exp.sampling, restore.posthoc_sigma_rel(exp))
    return (f"likelihood_step{step}_{tag}{params}_{split}"
            f"_n{o.num_images}_seed{o.seed}")


def likelihood_workdir(exp) -> dict:
    """Scores likelihood.num_images held-out images; writes and returns the result dict."""
    check_likelihood(exp)
    o = exp.likelihood
    params, step = restore.sampling_params(exp, exp.workdir)
    n_dev = exp.mesh.devices.size
    batch = max(n_dev, -(-min(o.batch_size, o.num_images) // n_dev) * n_dev)
    program = (ode_program if o.bound == "ode" else vlb_program)(exp, batch)
    per_image, nfes, parts = [], [], {"prior": [], "decoder": []}
    compile_seconds = seconds = 0.0
    bar = progress.bar(o.num_images, "img", f"likelihood ({o.bound})")
    try:
        for i, (start, (levels, labels)) in enumerate(_batches(exp, batch)):
            key = jax.random.fold_in(jax.random.PRNGKey(o.seed), i)
            clock = time.perf_counter()
            if i == 0:
                program = program.lower(params, levels, labels, key).compile()
                compile_seconds = time.perf_counter() - clock
                clock = time.perf_counter()
            out = parallel.to_host(program(params, levels, labels, key))
            seconds += time.perf_counter() - clock
            keep = min(batch, o.num_images - start)
            if o.bound == "ode":
                bpd, nfe = out
                if int(nfe) < 0:
                    raise ConfigError(f"config.likelihood.solver={o.solver!r} did not reach "
                                      f"t_max within {ode.MAX_STEPS} steps; loosen "
                                      f"config.likelihood.rtol={o.rtol} / atol={o.atol}")
                nfes.append(int(nfe))
            else:
                bpd = out["total"]
                for k in parts:
                    parts[k].append(out[k][:keep])
            per_image.append(np.asarray(bpd, np.float64)[:keep])
            bar.update(keep)
            bar.set_postfix(bpd=float(np.mean(np.concatenate(per_image))))
    finally:
        bar.close()
    per_image = np.concatenate(per_image)
    mean = float(per_image.mean())
    sem = float(per_image.std(ddof=1) / np.sqrt(len(per_image))) if len(per_image) > 1 else 0.0
    result = {
        "step": int(step), "bound": o.bound, "bits_per_dim": mean, "standard_error": sem,
        "split": o.split, "num_images": int(o.num_images), **_describe(exp),
        "nfe": (float(np.mean(nfes)) if nfes else exp.schedule.num_timesteps),
        "conditioning": ("labels: log p(x | y)" if exp.conditioning.num_classes
                         else "none"),
        "seconds": round(seconds, 2), "seconds_per_image": round(seconds / o.num_images, 4),
        "compile_seconds": round(compile_seconds, 2), "batch_size": batch,
        "devices": n_dev, "seed": o.seed,
    }
    if o.bound == "vlb":
        result.update({f"{k}_bits_per_dim": float(np.concatenate(v).mean())
                       for k, v in parts.items()})
    result["per_image"] = [round(float(b), 5) for b in per_image]
    path = os.path.join(exp.workdir, "likelihood", run_name(exp, step) + ".json")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        how = (f"{o.probe} x{o.num_probes}" if o.probe != "exact" else "exact divergence")
        what = (f"PF-ODE ({o.solver}, rtol {o.rtol:g}, {how}, {o.dequantization} "
                f"dequantization, {result['nfe']:.0f} NFE)" if o.bound == "ode"
                else f"VLB ({result['variance']} variance, T={result['num_timesteps']})")
        print(f"step {step}: {mean:.4f} +- {sem:.4f} bits/dim over {o.num_images} images of "
              f"{o.split}, {what}; {result['seconds_per_image']:.3f} s/image; wrote {path}",
              flush=True)
    result["path"] = path
    return result


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    likelihood_workdir(Experiment(config, workdir, load_data=False))
