"""TrainState, optimizer, the jitted train step with EMA, and the training loop."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax import checkpoint, data, generate, losses, parallel, schedules, writers
from diffjax.errors import NonFiniteError, Preempted
from diffjax.models import build_model, count_params


@flax.struct.dataclass
class TrainState:
    """Everything needed to continue exactly. The data position is `step` (see diffjax.data)."""

    step: jax.Array          # int32 []
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array           # uint32 [2], raw PRNG key data
    nonfinite_count: jax.Array  # int32 [], consecutive updates skipped for a non-finite loss/grad


@flax.struct.dataclass
class MultiEMATrainState(TrainState):
    """A TrainState that also keeps one EMA of the params per rate in config.training.ema_decays
    (`extra_ema[i]` at rate ema_decays[i]); `ema_params` stays the EMA at training.ema_decay. Runs
    without extra rates use TrainState, so their checkpoint layout is unchanged."""

    extra_ema: tuple = ()


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


def init_state(rng, model, image_shape, tx, num_extra_ema: int = 0) -> TrainState:
    """Fresh state: params from model.init on a dummy batch, every EMA = params, step 0.
    num_extra_ema > 0 gives a MultiEMATrainState with that many extra EMAs."""
    rng, init_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params = model.init({"params": init_rng}, dummy, jnp.zeros((1,)), None, train=False)["params"]
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                  opt_state=tx.init(params), rng=rng, nonfinite_count=jnp.zeros((), jnp.int32))
    if num_extra_ema:
        return MultiEMATrainState(**fields, extra_ema=(params,) * num_extra_ema)
    return TrainState(**fields)


def ema_decay_at(step, decay: float, warmup: bool):
    """EMA decay at update `step`: constant, or min(decay, (1 + k) / (10 + k)) with warmup."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    k = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + k) / (10.0 + k))


def ema_params_of(state: TrainState, config, decay: float):
    """The params of `state` averaged at EMA rate `decay`: training.ema_decay -> ema_params,
    a rate of training.ema_decays -> its extra EMA, 0.0 -> the raw params (an EMA with decay 0)."""
    tcfg = config.training
    extra = tuple(tcfg.get("ema_decays", ()))
    if decay == 0.0:
        return state.params
    if decay == tcfg.ema_decay:
        return state.ema_params
    if decay in extra and isinstance(state, MultiEMATrainState):
        return state.extra_ema[extra.index(decay)]
    raise ValueError(f"config.sampling.ema_decays contains {decay}, which this run does not keep; "
                     f"allowed: {', '.join(map(str, (tcfg.ema_decay, *extra)))} or 0.0 (the raw "
                     f"params)")


def make_train_step(model, schedule, config, tx, lr_fn):
    """Returns train_step(state, batch) -> (state, metrics), pure; jit it with `jit_train_step`.

    batch: {'image': [B, H, W, C] float32 in [-1, 1], 'label': [B] int32}. The per-step randomness
    comes from fold_in(state.rng, state.step), so it is independent of how the batch is sharded.
    A step whose loss or gradient is not finite changes nothing but `step` (the data position)
    and `nonfinite_count`; metrics['skipped'] is 1 for it."""
    dcfg, mcfg, tcfg = config.diffusion, config.model, config.training
    null_label = getattr(model, "num_classes", 0)
    nan_steps = _test_nan_steps()

    accum = tcfg.grad_accum_steps
    extra_decays = tuple(tcfg.get("ema_decays", ()))

    def micro_loss(params, micro, rng_drop):
        """Mean loss of one micro-batch {'image', 'label', 't', 'eps'}."""
        labels = micro["label"] if null_label else None
        apply = lambda x_t, cond: model.apply(  # noqa: E731
            {"params": params}, x_t, cond, labels, train=True, rngs={"dropout": rng_drop})
        loss, _, _ = losses.denoising_loss(apply, micro["image"], micro["t"], micro["eps"],
                                           schedule, dcfg)
        return loss

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        rng_loss, rng_drop, rng_label = jax.random.split(rng, 3)
        # The whole batch's randomness is drawn first, so accumulation changes nothing but memory.
        t, eps = losses.draw_noise(rng_loss, batch["image"].shape, schedule, dcfg, state.step)
        full = {"image": batch["image"], "label": batch["label"], "t": t, "eps": eps}
        if null_label and mcfg.class_dropout > 0:
            drop = jax.random.bernoulli(rng_label, mcfg.class_dropout, batch["label"].shape)
            full["label"] = jnp.where(drop, null_label, batch["label"])

        if accum == 1:
            loss, grads = jax.value_and_grad(micro_loss)(state.params, full, rng_drop)
        else:
            # Micro-batch j takes examples j, j + accum, ...: every device holds a slice of each.
            micros = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1),
                full)

            def add(carry, inputs):
                micro, key = inputs
                loss_j, grads_j = jax.value_and_grad(micro_loss)(state.params, micro, key)
                return jax.tree.map(jnp.add, carry, (loss_j, grads_j)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(add, zeros,
                                            (micros, jax.random.split(rng_drop, accum)))
            loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
        if nan_steps:  # test-only fault injection (DIFFJAX_TEST_NAN_AT_STEPS)
            poison = jnp.where(jnp.isin(state.step, jnp.asarray(nan_steps)), jnp.nan, 1.0)
            loss, grads = loss * poison, jax.tree.map(lambda g: g * poison, grads)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep_if_bad = lambda new, old: jax.tree.map(  # noqa: E731
            lambda n, o: jnp.where(finite, n, o), new, old)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def ema_update(ema, rate):  # e <- d e + (1 - d) params, every rate with the same warmup
            d = ema_decay_at(state.step, rate, tcfg.ema_warmup)
            return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)

        ema = ema_update(state.ema_params, tcfg.ema_decay)
        extra = {}
        if extra_decays:
            extra["extra_ema"] = keep_if_bad(
                tuple(ema_update(e, rate) for rate, e in zip(extra_decays, state.extra_ema)),
                state.extra_ema)
        nonfinite_count = jnp.where(finite, 0, state.nonfinite_count + 1)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_fn(state.step),
                   "skipped": (~finite).astype(jnp.int32), "nonfinite_count": nonfinite_count}
        new_state = state.replace(
            step=state.step + 1, params=keep_if_bad(params, state.params),
            ema_params=keep_if_bad(ema, state.ema_params),
            opt_state=keep_if_bad(opt_state, state.opt_state), nonfinite_count=nonfinite_count,
            **extra)
        return new_state, metrics

    return train_step


def _test_nan_steps() -> tuple[int, ...]:
    """Steps (0-based update indices) whose loss is made NaN, from $DIFFJAX_TEST_NAN_AT_STEPS
    ('3,4'). A test-only hook for the non-finite guard; empty in normal runs."""
    raw = os.environ.get("DIFFJAX_TEST_NAN_AT_STEPS", "").strip()
    return tuple(int(v) for v in raw.split(",") if v.strip()) if raw else ()


def jit_train_step(train_step, mesh, state_sharding):
    """Compiles the step over the mesh: the state keeps `state_sharding` (replicated, or FSDP)
    and is donated; the batch is split over all devices; metrics are replicated."""
    repl = parallel.replicated(mesh)
    return jax.jit(train_step, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                   out_shardings=(state_sharding, repl), donate_argnums=0)


class Experiment:
    """Builds everything a run needs from a validated config: data, model, schedule, optimizer."""

    def __init__(self, config, workdir: str | None = None, load_data: bool = True):
        self.config = config
        self.workdir = os.path.abspath(workdir) if workdir else None
        self.mesh = parallel.make_mesh(config.mesh.num_devices, config.mesh.shape)
        tcfg = config.training
        if tcfg.batch_size % tcfg.grad_accum_steps:
            raise ValueError(f"config.training.batch_size={tcfg.batch_size} does not split into "
                             f"config.training.grad_accum_steps={tcfg.grad_accum_steps} "
                             f"micro-batches")
        parallel.check_batch(tcfg.batch_size, self.mesh)
        parallel.check_batch(tcfg.batch_size // tcfg.grad_accum_steps, self.mesh,
                             "a micro-batch (config.training.batch_size / grad_accum_steps)")
        self.schedule = schedules.get_schedule(config.diffusion)
        self.image_shape, self.num_classes = data.dataset_spec(
            config.data.name, config.data.data_dir, config.data.image_size)
        self.pipeline = self.val_pipeline = None
        if load_data:
            self.pipeline = self._pipeline("split", config.seed, config.data.random_flip)
            if config.data.get("val_split") and tcfg.get("val_every_steps", 0):
                # held out: fixed order (permutation seed 0), no flips
                self.val_pipeline = self._pipeline("val_split", 0, False)
        if config.model.class_conditional and not self.num_classes:
            raise ValueError(f"config.model.class_conditional=True but {config.data.name!r} has "
                             f"no labels")
        self.model = build_model(config.model, self.image_shape, self.num_classes,
                                 dtype=config.training.compute_dtype)
        self.tx, self.lr_fn = build_optimizer(config.optim, config.training.num_steps)
        self.state_sharding = parallel.state_sharding(self.abstract_state(), self.mesh)

    @property
    def num_extra_ema(self) -> int:
        return len(tuple(self.config.training.get("ema_decays", ())))

    def _init(self, rng) -> TrainState:
        return init_state(rng, self.model, self.image_shape, self.tx, self.num_extra_ema)

    def abstract_state(self) -> TrainState:
        """Shapes and dtypes of the train state, without computing anything."""
        rng = jax.random.PRNGKey(self.config.seed)
        return jax.eval_shape(self._init, rng)

    def num_params(self) -> int:
        return count_params(self.abstract_state().params)

    def init_state(self) -> TrainState:
        """A fresh state, laid out by `state_sharding` over the mesh."""
        rng = jax.random.PRNGKey(self.config.seed)
        init = jax.jit(self._init, out_shardings=self.state_sharding)
        return init(rng)

    def abstract_target(self):
        """ShapeDtypeStructs with this mesh's shardings: a restore target for any checkpoint of
        this run, whatever mesh or device count saved it."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state(), self.state_sharding)

    def train_step_fn(self):
        """The jitted train step of this experiment."""
        step = make_train_step(self.model, self.schedule, self.config, self.tx, self.lr_fn)
        return jit_train_step(step, self.mesh, self.state_sharding)

    def global_batch(self, step: int):
        return parallel.to_global(self.pipeline.batch(step), self.mesh)

    def _pipeline(self, split_key: str, seed: int, random_flip: bool) -> data.Pipeline:
        """Global batches of training.batch_size from the split config.data[split_key]; its
        decoded images must have the model's image shape."""
        dcfg = self.config.data
        source, _ = data.load_source(dcfg.name, dcfg[split_key], dcfg.data_dir)
        pipeline = data.Pipeline(source, self.config.training.batch_size, seed,
                                 jax.process_index(), jax.process_count(), dcfg.image_size,
                                 random_flip, dcfg.in_memory, self.num_classes)
        if tuple(pipeline.image_shape) != self.image_shape:
            raise ValueError(f"config.data.{split_key}={dcfg[split_key]!r} of "
                             f"config.data.name={dcfg.name!r}: decoded images have shape "
                             f"{pipeline.image_shape}, expected {self.image_shape}")
        return pipeline

    @property
    def num_val_batches(self) -> int:
        """Whole global batches of held-out examples: training.val_num_examples (0: the whole
        split), capped at the split's size, at least one."""
        wanted = self.config.training.val_num_examples or self.val_pipeline.num_examples
        wanted = min(wanted, self.val_pipeline.num_examples)
        return max(1, wanted // self.config.training.batch_size)

    def val_loss_fn(self):
        """Returns val_loss(params) -> float: the training loss (the run's parameterization and
        weighting) of the held-out batches at the fixed times losses.time_quantiles(...,
        training.val_num_levels), with noise from PRNGKey(0) folded with the batch index and the
        level, no dropout and true labels. The same params give the same value."""
        model, schedule, dcfg = self.model, self.schedule, self.config.diffusion
        ts = losses.time_quantiles(schedule, dcfg, self.config.training.val_num_levels)
        conditional = bool(getattr(model, "num_classes", 0))

        def batch_loss(params, images, labels, rng):
            apply = lambda x_t, cond: model.apply(  # noqa: E731
                {"params": params}, x_t, cond, labels if conditional else None, train=False)
            return jnp.sum(losses.grid_loss(apply, images, ts, rng, schedule, dcfg))

        fn = jax.jit(batch_loss, out_shardings=parallel.replicated(self.mesh))
        batches = [parallel.to_global(self.val_pipeline.batch(b), self.mesh)
                   for b in range(self.num_val_batches)]
        count = len(batches) * self.config.training.batch_size * len(ts)

        def val_loss(params) -> float:
            total = 0.0
            for b, batch in enumerate(batches):
                rng = jax.random.fold_in(jax.random.PRNGKey(0), b)
                total += float(fn(params, batch["image"], batch["label"], rng))
            return total / count

        return val_loss


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


class _StopSignal:
    """SIGTERM/SIGINT -> a flag checked between steps, so a preempted run checkpoints and exits.

    Multi-host runs use jax's preemption sync point instead (jax.distributed owns SIGTERM there),
    so that every process stops after the same step. A second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        _log(f"\nreceived {signal.Signals(signum).name}: finishing this step, then checkpointing")

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signum = self.signum or signal.SIGTERM
                    return True
            except RuntimeError:  # preemption service disabled
                pass
            return False
        return self.signum is not None

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def prepare_workdir(workdir: str, fresh: bool = False) -> None:
    """Creates WORKDIR and checks that it is writable. `fresh` first moves an existing, non-empty
    WORKDIR aside to WORKDIR.prev-<time> (nothing is deleted)."""
    if jax.process_index() == 0:
        if fresh and os.path.isdir(workdir) and os.listdir(workdir):
            aside = f"{workdir}.prev-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(workdir, aside)
            _log(f"--fresh: moved the previous run in {workdir} to {aside}")
        try:
            os.makedirs(workdir, exist_ok=True)
            probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise ValueError(f"--workdir {workdir} cannot be created or written "
                             f"({e.strerror or e}); choose a writable directory") from e


def _flat_config(config_dict: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config_dict.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_resumable(config, workdir: str, ckpt: checkpoint.Checkpointer, target) -> None:
    """Refuses to resume a WORKDIR whose newest checkpoint has another state shape (a different
    model, image size or dataset), naming the config fields that changed; logs other changes."""
    step = ckpt.latest_step()
    if step is None:
        return
    saved_path = os.path.join(workdir, "config.json")
    changes = []
    if os.path.exists(saved_path):
        with open(saved_path) as f:
            saved = _flat_config(json.load(f))
        new = _flat_config(json.loads(json.dumps(config.to_dict(), default=list)))
        changes = [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new))
                   if saved.get(k) != new.get(k)]
    try:
        saved_shapes = ckpt.saved_shapes(step)
    except Exception:  # noqa: BLE001 -- unreadable metadata: restore_latest treats it as corrupt
        return
    new_shapes = checkpoint.state_shapes(target)
    diff = [f"{k}: saved {saved_shapes.get(k)}, now {new_shapes.get(k)}"
            for k in sorted(set(saved_shapes) | set(new_shapes))
            if saved_shapes.get(k) != new_shapes.get(k)]
    if diff:
        what = "; ".join(changes) if changes else "; ".join(diff[:4])
        raise ValueError(
            f"--workdir {workdir} holds a run (checkpoint step {step}) whose train state has "
            f"another shape than this config's ({len(diff)} arrays differ). Changed: {what}. "
            f"Resuming would silently change the experiment: use a new --workdir, or pass --fresh "
            f"to move the old run to {workdir}.prev-<time> and start over here.")
    if changes:
        _log("resuming with a changed config: " + "; ".join(changes))


def _summarise(host_metrics: list[dict]) -> dict:
    """Means over a logging interval; loss and grad_norm over the applied (finite) steps only."""
    applied = [m for m in host_metrics if not m["skipped"]]
    mean = lambda key, ms: float(np.mean([m[key] for m in ms])) if ms else float("nan")  # noqa: E731
    return {"loss": mean("loss", applied), "grad_norm": mean("grad_norm", applied),
            "lr": mean("lr", host_metrics),
            "skipped_steps": int(sum(int(m["skipped"]) for m in host_metrics))}


def _close_quietly(*closables) -> None:
    """Closes what a failed run opened without hiding the error that stopped it."""
    for closable in closables:
        try:
            closable.close()
        except Exception as e:  # noqa: BLE001
            logging.warning("while stopping, %s.close() failed: %s", type(closable).__name__, e)


def train(config, workdir: str, fresh: bool = False) -> TrainState:
    """Trains config.training.num_steps steps in `workdir`, resuming from its latest checkpoint.

    Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/, samples/ grids and
    loss_curve.png. SIGTERM/SIGINT checkpoint and raise Preempted; too many non-finite steps in a
    row raise NonFiniteError; neither loses the last committed checkpoint."""
    from tqdm import tqdm

    exp = Experiment(config, workdir)
    tcfg = config.training
    is_main = jax.process_index() == 0
    prepare_workdir(exp.workdir, fresh)
    ckpt = checkpoint.Checkpointer(os.path.join(exp.workdir, "checkpoints"), tcfg.keep_checkpoints)
    check_resumable(config, exp.workdir, ckpt, exp.abstract_state())
    write_config(config, exp.workdir)
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

    step_fn = exp.train_step_fn()
    sampler = generate.Generator(exp.model, exp.schedule, config, exp.mesh, exp.image_shape,
                                 exp.num_classes)
    from diffjax.evaluation.periodic import PeriodicFID  # every config.eval.every_steps; 0: off

    periodic_fid = PeriodicFID(config, exp.mesh, sampler, exp.workdir)
    val_every = tcfg.get("val_every_steps", 0) if exp.val_pipeline is not None else 0
    val_loss = exp.val_loss_fn() if val_every else None
    pending: list[dict] = []
    previous = None  # the last step's metrics, checked while the next step runs
    t_last, done, last_saved = time.time(), start, None
    bar = tqdm(total=tcfg.num_steps, initial=start, disable=not is_main, unit="step",
               dynamic_ncols=True)

    def check_finite(metrics, step_done: int) -> None:
        streak = int(metrics["nonfinite_count"])
        if streak >= tcfg.max_nonfinite_steps:
            ckpt.wait()
            raise NonFiniteError(
                f"the loss or gradient was non-finite for {streak} steps in a row (steps "
                f"{step_done - streak + 1}..{step_done}; config.training.max_nonfinite_steps="
                f"{tcfg.max_nonfinite_steps}); stopped at step {step_done}. Those updates were "
                f"skipped; the last committed checkpoint is step {ckpt.latest_step()} in "
                f"{ckpt.directory}. Lower optim.lr or check the data, then rerun to resume.")

    try:
        with _StopSignal() as stop:
            for step in range(start, tcfg.num_steps):
                state, metrics = step_fn(state, exp.global_batch(step))
                if previous is not None:
                    check_finite(previous, step)
                previous = metrics
                pending.append(metrics)
                done = step + 1
                validation = {}
                if val_every and (done % val_every == 0 or done == tcfg.num_steps):
                    t_val = time.time()
                    validation["val_loss"] = val_loss(state.params)
                    t_last += time.time() - t_val  # not counted in the training throughput
                if done % tcfg.log_every_steps == 0 or done == tcfg.num_steps:
                    logged = _summarise(jax.device_get(pending))
                    now = time.time()
                    logged["steps_per_sec"] = len(pending) / max(now - t_last, 1e-9)
                    logged["images_per_sec"] = logged["steps_per_sec"] * tcfg.batch_size
                    t_last, pending = now, []
                    writer.write(done, {**logged, **validation})
                    bar.set_postfix(loss=f"{logged['loss']:.4f}",
                                    img_s=f"{logged['images_per_sec']:.0f}")
                elif validation:
                    writer.write(done, validation)
                bar.update(1)
                if done % tcfg.checkpoint_every_steps == 0 or done == tcfg.num_steps:
                    check_finite(metrics, done)
                    ckpt.save(done, state)
                    last_saved = done
                sample_due = tcfg.sample_every_steps and done % tcfg.sample_every_steps == 0
                if sample_due or done == tcfg.num_steps:
                    write_grid(sampler, state.ema_params, exp.workdir, done, writer)
                    if is_main:
                        writers.plot_loss_curve(metrics_path,
                                                os.path.join(exp.workdir, "loss_curve.png"))
                periodic_fid(done, state.ema_params)
                if stop.should_stop(done):
                    if last_saved != done:
                        ckpt.save(done, state, force=True)
                    ckpt.wait()
                    raise Preempted(stop.signum, done, ckpt.directory)
            if previous is not None:
                check_finite(previous, done)
    except OSError as e:
        try:
            ckpt.wait()
        except Exception:  # noqa: BLE001 -- report the original error below
            pass
        raise OSError(e.errno, f"{e.strerror or e} (while training, after step {done}); the last "
                      f"committed checkpoint is step {ckpt.latest_step()} in {ckpt.directory}; "
                      f"fix the cause and rerun the same command to resume",
                      e.filename) from e
    except BaseException:
        _close_quietly(bar, writer, ckpt)
        raise
    bar.close()
    writer.close()
    ckpt.close()
    _log(f"done: step {int(state.step)}; outputs in {exp.workdir}")
    return state


def write_grid(sampler, ema_params, workdir: str, step: int, writer) -> None:
    """Samples config.sampling.grid_samples EMA images into samples/grid_STEP.png."""
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
