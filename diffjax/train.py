"""TrainState, optimizer, the jitted train step with EMA, and the training loop."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax import checkpoint, data, generate, losses, parallel, schedules, writers
from diffjax.models import build_model, count_params


@flax.struct.dataclass
class TrainState:
    """Everything needed to continue exactly. The data position is `step` (see diffjax.data)."""

    step: jax.Array          # int32 []
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array           # uint32 [2], raw PRNG key data


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
    """Linear warmup over cfg.warmup_steps, then constant or cosine decay to lr * final_lr_frac."""
    warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
    if cfg.decay == "constant":
        after = optax.constant_schedule(cfg.lr)
    elif cfg.decay == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, max(num_steps - cfg.warmup_steps, 1),
                                            alpha=cfg.final_lr_frac)
    else:
        raise ValueError(f"config.optim.decay={cfg.decay!r} is unknown; allowed: constant, cosine")
    if cfg.warmup_steps <= 0:
        return after
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def build_optimizer(cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clip -> Adam or AdamW (decoupled weight decay) with the lr schedule."""
    lr = learning_rate_schedule(cfg, num_steps)
    if cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"config.optim.name={cfg.name!r} is unknown; allowed: adam, adamw")
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, lr


def init_state(rng, model, image_shape, tx) -> TrainState:
    """Fresh state: params from model.init on a dummy batch, EMA = params, step 0."""
    rng, init_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params = model.init({"params": init_rng}, dummy, jnp.zeros((1,)), None, train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params), rng=rng)


def ema_decay_at(step, decay: float, warmup: bool):
    """EMA decay at update `step`: constant, or min(decay, (1 + k) / (10 + k)) with warmup."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    k = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + k) / (10.0 + k))


def make_train_step(model, schedule, config, tx, lr_fn):
    """Returns train_step(state, batch) -> (state, metrics), pure; jit it with `jit_train_step`.

    batch: {'image': [B, H, W, C] float32 in [-1, 1], 'label': [B] int32}. The per-step randomness
    comes from fold_in(state.rng, state.step), so it is independent of how the batch is sharded."""
    dcfg, mcfg, tcfg = config.diffusion, config.model, config.training
    null_label = getattr(model, "num_classes", 0)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        rng_loss, rng_drop, rng_label = jax.random.split(rng, 3)
        labels = None
        if null_label:
            labels = batch["label"]
            if mcfg.class_dropout > 0:
                drop = jax.random.bernoulli(rng_label, mcfg.class_dropout, labels.shape)
                labels = jnp.where(drop, null_label, labels)

        def loss_fn(params):
            apply = lambda x_t, cond: model.apply(  # noqa: E731
                {"params": params}, x_t, cond, labels, train=True, rngs={"dropout": rng_drop})
            loss, _, _ = losses.diffusion_loss(apply, batch["image"], rng_loss, schedule, dcfg)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, tcfg.ema_decay, tcfg.ema_warmup)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr_fn(state.step)}
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step


def jit_train_step(train_step, mesh):
    """Compiles the step over the mesh: state replicated and donated, batch split on its axis 0."""
    repl = parallel.replicated(mesh)
    return jax.jit(train_step, in_shardings=(repl, parallel.batch_sharding(mesh)),
                   out_shardings=(repl, repl), donate_argnums=0)


class Experiment:
    """Builds everything a run needs from a validated config: data, model, schedule, optimizer."""

    def __init__(self, config, workdir: str | None = None, load_data: bool = True):
        self.config = config
        self.workdir = os.path.abspath(workdir) if workdir else None
        self.mesh = parallel.make_mesh(config.mesh.num_devices)
        parallel.check_batch(config.training.batch_size, self.mesh)
        self.schedule = schedules.get_schedule(config.diffusion)
        self.image_shape, self.num_classes = data.dataset_spec(
            config.data.name, config.data.data_dir, config.data.image_size)
        self.pipeline = None
        if load_data:
            source, _ = data.load_source(config.data.name, config.data.split, config.data.data_dir)
            self.pipeline = data.Pipeline(
                source, config.training.batch_size, config.seed, jax.process_index(),
                jax.process_count(), config.data.image_size, config.data.random_flip,
                config.data.in_memory, self.num_classes)
            if tuple(self.pipeline.image_shape) != self.image_shape:
                raise ValueError(f"config.data.name={config.data.name!r}: decoded images have shape "
                                 f"{self.pipeline.image_shape}, expected {self.image_shape}")
        if config.model.class_conditional and not self.num_classes:
            raise ValueError(f"config.model.class_conditional=True but {config.data.name!r} has no labels")
        self.model = build_model(config.model, self.image_shape, self.num_classes)
        self.tx, self.lr_fn = build_optimizer(config.optim, config.training.num_steps)

    def abstract_state(self) -> TrainState:
        """Shapes and dtypes of the train state, without computing anything."""
        rng = jax.random.PRNGKey(self.config.seed)
        return jax.eval_shape(lambda r: init_state(r, self.model, self.image_shape, self.tx), rng)

    def num_params(self) -> int:
        return count_params(self.abstract_state().params)

    def init_state(self) -> TrainState:
        """A fresh state, replicated over the mesh."""
        rng = jax.random.PRNGKey(self.config.seed)
        init = jax.jit(lambda r: init_state(r, self.model, self.image_shape, self.tx),
                       out_shardings=parallel.replicated(self.mesh))
        return init(rng)

    def global_batch(self, step: int):
        return parallel.to_global(self.pipeline.batch(step), self.mesh)


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def train(config, workdir: str) -> TrainState:
    """Trains config.training.num_steps steps in `workdir`, resuming from its latest checkpoint.

    Writes metrics.jsonl, TensorBoard events, checkpoints/, samples/ grids and loss_curve.png."""
    from tqdm import tqdm

    exp = Experiment(config, workdir)
    tcfg = config.training
    is_main = jax.process_index() == 0
    os.makedirs(exp.workdir, exist_ok=True)
    ckpt = checkpoint.Checkpointer(os.path.join(exp.workdir, "checkpoints"), tcfg.keep_checkpoints)
    state = exp.init_state()
    restored, restored_step = ckpt.restore_latest(state)
    if restored is not None:
        state = restored
        _log(f"resumed from checkpoint step {restored_step} in {ckpt.directory}")
    start = int(state.step)
    metrics_path = os.path.join(exp.workdir, "metrics.jsonl")
    if is_main:
        writers.truncate_metrics(metrics_path, start)
    writer = writers.MetricWriter(exp.workdir, enabled=is_main)
    _log(f"params: {count_params(state.params)}  devices: {exp.mesh.devices.size}  "
         f"global batch: {tcfg.batch_size}  steps: {start} -> {tcfg.num_steps}")

    step_fn = jit_train_step(make_train_step(exp.model, exp.schedule, config, exp.tx, exp.lr_fn),
                             exp.mesh)
    sampler = generate.Generator(exp.model, exp.schedule, config, exp.mesh, exp.image_shape,
                                 exp.num_classes)
    pending: list[dict] = []
    t_last, step = time.time(), start
    bar = tqdm(total=tcfg.num_steps, initial=start, disable=not is_main, unit="step",
               dynamic_ncols=True)
    try:
        for step in range(start, tcfg.num_steps):
            state, metrics = step_fn(state, exp.global_batch(step))
            pending.append(metrics)
            done = step + 1
            if done % tcfg.log_every_steps == 0 or done == tcfg.num_steps:
                host = jax.device_get(pending)
                logged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                now = time.time()
                logged["steps_per_sec"] = len(host) / max(now - t_last, 1e-9)
                logged["images_per_sec"] = logged["steps_per_sec"] * tcfg.batch_size
                t_last, pending = now, []
                if not np.isfinite(logged["loss"]):
                    raise FloatingPointError(f"non-finite loss {logged['loss']} at step {done}")
                writer.write(done, logged)
                bar.set_postfix(loss=f"{logged['loss']:.4f}", img_s=f"{logged['images_per_sec']:.0f}")
            bar.update(1)
            if done % tcfg.checkpoint_every_steps == 0 or done == tcfg.num_steps:
                ckpt.save(done, state)
            if (tcfg.sample_every_steps and done % tcfg.sample_every_steps == 0) or done == tcfg.num_steps:
                write_grid(sampler, state.ema_params, exp.workdir, done, writer)
                if is_main:
                    writers.plot_loss_curve(metrics_path, os.path.join(exp.workdir, "loss_curve.png"))
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    _log(f"done: step {int(state.step)}; outputs in {exp.workdir}")
    return state


def write_grid(sampler, ema_params, workdir: str, step: int, writer) -> None:
    """Samples config.sampling.grid_samples images from the EMA params into samples/grid_STEP.png."""
    n = sampler.config.sampling.grid_samples
    images, nfe = sampler.sample(ema_params, n, seed=sampler.config.sampling.seed)
    if jax.process_index() == 0:
        path = os.path.join(workdir, "samples", f"grid_{step:08d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writers.save_grid(images, path)
        writer.write_images(step, "samples", writers.image_grid(images))
        logging.info("wrote %s (%d NFE)", path, nfe)


def write_config(config, workdir: str) -> str:
    """Writes the resolved config as WORKDIR/config.json (process 0); returns the path."""
    path = os.path.join(os.path.abspath(workdir), "config.json")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=list)
    return path
