"""The training loop: resume, step, log, validate, checkpoint, sample grids, stop cleanly."""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

from diffjax import checkpoint, posthoc_ema, progress, restore, writers
from diffjax.errors import ConfigError, NonFiniteError, Preempted
from diffjax.models import count_params
from diffjax.training.signals import StopSignal
from diffjax.training.validation import make_val_loss

STEP_METRICS = ("loss", "grad_norm", "lr", "skipped", "nonfinite_count")


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


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
            raise ConfigError(f"--workdir {workdir} cannot be created or written "
                              f"({e.strerror or e}); choose a writable directory") from e


def _flat_config(config_dict: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config_dict.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_resumable(config, workdir: str, ckpt: checkpoint.Checkpointer, target,
                    saved_config: dict | None = None) -> None:
    """Refuses to resume a WORKDIR whose newest checkpoint has another state shape (a different
    model, image size or dataset), naming the config fields that changed (against saved_config,
    the run's config.json in the current layout); logs other changes."""
    step = ckpt.latest_step()
    if step is None:
        return
    changes = []
    if saved_config is not None:
        saved = _flat_config(saved_config)
        new = _flat_config(json.loads(json.dumps(config.to_dict(), default=list)))
        # Fields the saved config lacks were added to diffjax since that run: not a change.
        changes = [f"{k}: {saved[k]!r} -> {new.get(k)!r}" for k in sorted(saved)
                   if saved[k] != new.get(k)]
    try:
        diff = ckpt.layout_diff(step, target)
    except Exception:  # noqa: BLE001 -- unreadable metadata: restore_latest treats it as corrupt
        return
    if diff:
        what = "; ".join(changes) if changes else "; ".join(diff[:4])
        raise ConfigError(
            f"--workdir {workdir} holds a run (checkpoint step {step}) whose train state has "
            f"another shape than this config's ({len(diff)} arrays differ). Changed: {what}. "
            f"Resuming would silently change the experiment: use a new --workdir, or pass --fresh "
            f"to move the old run to {workdir}.prev-<time> and start over here.")
    if changes:
        _log("resuming with a changed config: " + "; ".join(changes))


def summarise(host_metrics: list[dict]) -> dict:
    """Means over a logging interval; loss, grad_norm and the objective's own metrics over the
    applied (finite) steps only."""
    applied = [m for m in host_metrics if not m["skipped"]]
    mean = lambda key, ms: float(np.mean([m[key] for m in ms])) if ms else float("nan")  # noqa: E731
    extra = [k for k in host_metrics[0] if k not in STEP_METRICS]
    return {"loss": mean("loss", applied), "grad_norm": mean("grad_norm", applied),
            **{k: mean(k, applied) for k in extra}, "lr": mean("lr", host_metrics),
            "skipped_steps": int(sum(int(m["skipped"]) for m in host_metrics))}


def close_quietly(*closables) -> None:
    """Closes what a failed run opened without hiding the error that stopped it."""
    for closable in closables:
        try:
            closable.close()
        except Exception as e:  # noqa: BLE001
            logging.warning("while stopping, %s.close() failed: %s", type(closable).__name__, e)


def write_config(config, workdir: str) -> str:
    """Writes the resolved config as WORKDIR/config.json (process 0); returns the path."""
    path = os.path.join(os.path.abspath(workdir), "config.json")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=list)
    return path


def write_grid(generator, ema_params, workdir: str, step: int, writer) -> None:
    """Samples sampling.grid_samples EMA images into samples/grid_STEP.png."""
    s = generator.sampling
    images, nfe = generator.sample(ema_params, s.grid_samples, seed=s.seed)
    if jax.process_index() == 0:
        path = os.path.join(workdir, "samples", f"grid_{step:08d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writers.save_grid(images, path)
        writer.write_images(step, "samples", writers.image_grid(images))
        logging.info("wrote %s (%d NFE)", path, nfe)


def train(exp, fresh: bool = False, record: dict | None = None,
          saved_config: dict | None = None):
    """Trains exp.training.num_steps steps in exp.workdir, resuming from its latest checkpoint.

    Writes config.json, launch.json (`record`: the config file and flags, when given),
    metrics.jsonl, TensorBoard events, checkpoints/, samples/ grids and loss_curve.png.
    SIGTERM/SIGINT checkpoint and raise Preempted; too many non-finite steps in a row raise
    NonFiniteError; neither loses the last committed checkpoint. saved_config: the workdir's
    config.json (current layout), to name what changed when a resume is refused. Returns the
    state."""
    return _Run(exp, fresh, record, saved_config).run()


class _Run:
    """One call of `train`: the set-up, the loop and its hooks."""

    def __init__(self, exp, fresh: bool, record: dict | None = None,
                 saved_config: dict | None = None):
        self.exp, self.t = exp, exp.training
        self.workdir, self.is_main = exp.workdir, jax.process_index() == 0
        prepare_workdir(self.workdir, fresh)
        self.ckpt = restore.checkpointer(self.workdir, self.t.keep_checkpoints)
        check_resumable(exp.config, self.workdir, self.ckpt, exp.abstract_state(), saved_config)
        write_config(exp.config, self.workdir)
        if record is not None and self.is_main:
            with open(os.path.join(self.workdir, "launch.json"), "w") as f:
                json.dump(record, f, indent=2)
        self.state = exp.init_state()
        restored, restored_step = self.ckpt.restore_latest(self.state)
        if restored is not None:
            self.state = restored
            _log(f"resumed from checkpoint step {restored_step} in {self.ckpt.directory}")
        self.start = int(self.state.step)
        self.metrics_path = os.path.join(self.workdir, "metrics.jsonl")
        if self.is_main:
            writers.truncate_metrics(self.metrics_path, self.start)
        self.writer = writers.MetricWriter(self.workdir, enabled=self.is_main)
        _log(f"params: {count_params(self.state.params)}  devices: {exp.mesh.devices.size}  "
             f"global batch: {self.t.batch_size}  steps: {self.start} -> {self.t.num_steps}")
        self.step_fn = exp.train_step_fn()
        self.generator = exp.generator()
        # An autoencoder stage has its own in-loop evaluation (none); a diffusion run's is FID.
        in_loop_eval = getattr(exp, "in_loop_eval", None)
        self.periodic_fid = (in_loop_eval(self.generator) if in_loop_eval is not None
                             else _periodic_fid(exp, self.generator))
        self.val_every = self.t.val_every_steps if exp.val_pipeline is not None else 0
        self.val_loss = make_val_loss(exp) if self.val_every else None
        self.pending, self.previous, self.last_saved = [], None, None
        self.t_last, self.done = time.time(), self.start

    def ema_params(self):
        return self.exp.ema.params(self.state.ema, self.exp.ema.default_key)

    def run(self):
        bar = progress.bar(self.t.num_steps, "step", "train", initial=self.start,
                           enabled=self.is_main)
        try:
            with StopSignal() as stop:
                for step in range(self.start, self.t.num_steps):
                    self._one_step(step, bar)
                    if stop.should_stop(self.done):
                        if self.last_saved != self.done:
                            self.ckpt.save(self.done, self.state, force=True)
                        self.ckpt.wait()
                        raise Preempted(stop.signum, self.done, self.ckpt.directory)
                if self.previous is not None:
                    self._check_finite(self.previous, self.done)
        except OSError as e:
            self._wait_quietly()
            raise OSError(e.errno, f"{e.strerror or e} (while training, after step {self.done}); "
                          f"the last committed checkpoint is step {self.ckpt.latest_step()} in "
                          f"{self.ckpt.directory}; fix the cause and rerun the same command to "
                          f"resume", e.filename) from e
        except BaseException:
            close_quietly(bar, self.writer, self.ckpt)
            raise
        bar.close()
        self.writer.close()
        self.ckpt.close()
        _log(f"done: step {int(self.state.step)}; outputs in {self.workdir}")
        return self.state

    def _one_step(self, step: int, bar) -> None:
        t = self.t
        self.state, metrics = self.step_fn(self.state, self.exp.global_batch(step))
        if self.previous is not None:
            self._check_finite(self.previous, step)
        self.previous = metrics
        self.pending.append(metrics)
        self.done = done = step + 1
        last = done == t.num_steps
        validation = {}
        if self.val_every and (done % self.val_every == 0 or last):
            t_val = time.time()
            validation["val_loss"] = self.val_loss(self.state)
            self.t_last += time.time() - t_val  # not counted in the training throughput
        if done % t.log_every_steps == 0 or last:
            self._log_interval(done, validation, bar)
        elif validation:
            self.writer.write(done, validation)
        bar.update(1)
        if done % t.checkpoint_every_steps == 0 or last:
            self._check_finite(metrics, done)
            self.ckpt.save(done, self.state)
            self.last_saved = done
        snapshot_every = getattr(self.exp, "posthoc", None) and self.exp.posthoc.snapshot_every
        if snapshot_every and (done % snapshot_every == 0 or last):
            posthoc_ema.save_snapshots(self.workdir, done, self.exp.ema, self.state.ema)
        if (t.sample_every_steps and done % t.sample_every_steps == 0) or last:
            write_grid(self.generator, self.ema_params(), self.workdir, done, self.writer)
            if self.is_main:
                writers.plot_loss_curve(self.metrics_path,
                                        os.path.join(self.workdir, "loss_curve.png"))
        self.periodic_fid(done, self.ema_params())

    def _log_interval(self, done: int, validation: dict, bar) -> None:
        logged = summarise(jax.device_get(self.pending))
        now = time.time()
        logged["steps_per_sec"] = len(self.pending) / max(now - self.t_last, 1e-9)
        logged["images_per_sec"] = logged["steps_per_sec"] * self.t.batch_size
        self.t_last, self.pending = now, []
        self.writer.write(done, {**logged, **validation})
        bar.set_postfix(loss=f"{logged['loss']:.4f}", img_s=f"{logged['images_per_sec']:.0f}")

    def _check_finite(self, metrics, step_done: int) -> None:
        streak = int(metrics["nonfinite_count"])
        limit = self.t.max_nonfinite_steps
        if streak >= limit:
            self.ckpt.wait()
            raise NonFiniteError(
                f"the loss or gradient was non-finite for {streak} steps in a row (steps "
                f"{step_done - streak + 1}..{step_done}; config.training.max_nonfinite_steps="
                f"{limit}); stopped at step {step_done}. Those updates were skipped; the last "
                f"committed checkpoint is step {self.ckpt.latest_step()} in "
                f"{self.ckpt.directory}. Lower optim.lr or check the data, then rerun to resume.")

    def _wait_quietly(self) -> None:
        try:
            self.ckpt.wait()
        except Exception:  # noqa: BLE001 -- the caller reports the original error
            pass


def _periodic_fid(exp, generator):
    """The FID during training (every eval.every_steps; 0: off)."""
    from diffjax.evaluation.periodic import PeriodicFID

    def make_evaluator():
        from diffjax.evaluation.evaluator import Evaluator

        return Evaluator(exp.eval, exp.data, exp.metrics, exp.mesh)

    return PeriodicFID(exp.eval, make_evaluator, generator, exp.workdir)
