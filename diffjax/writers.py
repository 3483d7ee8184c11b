"""Run outputs: metrics.jsonl, TensorBoard events, PNG sample grids and the loss curve."""

from __future__ import annotations

import json
import math
import os

import numpy as np


def image_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """images: [N, H, W, C] uint8 -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] uint8 grid."""
    n, h, w, c = images.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid


def save_grid(images: np.ndarray, path: str) -> None:
    """Writes [N, H, W, C] uint8 images as one PNG grid."""
    from PIL import Image

    grid = image_grid(images)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def save_samples(images: np.ndarray, directory: str, name: str, **extra) -> str:
    """Writes DIR/NAME.npz (uint8 `images`, NHWC, plus `extra` arrays) and DIR/NAME.png."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + ".npz")
    np.savez(path, images=images, **extra)
    save_grid(images[:256], os.path.join(directory, name + ".png"))
    return path


def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl file ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str, last_step: int) -> None:
    """Drops records after `last_step` (logged by a run that died before its next checkpoint)."""
    records = read_metrics(path)
    kept = [r for r in records if r["step"] <= last_step]
    if len(kept) != len(records):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)


def smooth_by_steps(steps: np.ndarray, values: np.ndarray, half_life_steps: float) -> np.ndarray:
    """Debiased exponential moving average over training steps: TensorBoard's smoothing, with the
    weight of a point halving every `half_life_steps` steps instead of at every logged point.

    steps: [N] increasing; values: [N]. Returns [N] float64: point n is
    sum_i c_i values[i] / sum_i c_i over i <= n, with
    c_i = (1 - 0.5^(gap_i / half_life_steps)) 0.5^((steps[n] - steps[i]) / half_life_steps) and
    gap_i = max(steps[i] - steps[i-1], 1) (the first point takes the next gap). Equally spaced
    points give TensorBoard's debiased EMA with weight 0.5^(gap / half_life_steps), and a constant
    stays that constant from the first point. Non-finite values pass through and are skipped."""
    steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    smoothed = values.copy()
    finite = np.flatnonzero(np.isfinite(values))
    gaps = np.diff(steps[finite], prepend=np.nan)
    if len(finite):
        gaps[0] = gaps[1] if len(finite) > 1 else 1.0
    gaps = np.maximum(gaps, 1.0)  # a repeated step counts as one step
    biased, total_weight = 0.0, 0.0
    for index, gap in zip(finite, gaps):
        decay = 0.5 ** (gap / half_life_steps)
        biased = decay * biased + (1 - decay) * values[index]
        total_weight = decay * total_weight + (1 - decay)
        smoothed[index] = biased / total_weight
    return smoothed


def plot_loss_curve(metrics_path: str, out_path: str) -> None:
    """Plots metrics.jsonl into a PNG, one panel each against step: the training loss with its
    debiased EMA (half-life 5% of the steps), the validation loss where logged, the learning
    rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("loss") is not None]
    if not train:
        return
    val = [r for r in records if r.get("val_loss") is not None]
    lr = [r for r in records if r.get("lr") is not None]
    panels = ["loss"] + (["val_loss"] if val else []) + (["lr"] if lr else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 1.2 + 2.2 * len(panels)), sharex=True,
                             squeeze=False)
    axes = dict(zip(panels, axes[:, 0]))
    steps = np.array([r["step"] for r in train])
    loss = np.array([r["loss"] for r in train])
    axes["loss"].plot(steps, loss, alpha=0.4, label="loss")
    if len(loss) > 5:
        half_life_steps = max(0.05 * (steps[-1] - steps[0]), 1.0)
        axes["loss"].plot(steps, smooth_by_steps(steps, loss, half_life_steps),
                          label=f"smoothed (debiased EMA, half-life {half_life_steps:.0f} steps)")
    axes["loss"].set_ylabel("training loss")
    axes["loss"].set_yscale("log")
    axes["loss"].legend()
    if val:  # training.val_every_steps: the loss on held-out data at fixed noise levels
        axes["val_loss"].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                              color="C2")
        axes["val_loss"].set_ylabel("validation loss")
        axes["val_loss"].set_yscale("log")
    if lr:
        axes["lr"].plot([r["step"] for r in lr], [r["lr"] for r in lr], color="C3")
        axes["lr"].set_ylabel("learning rate")
    axes[panels[-1]].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


class MetricWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    Only process 0 writes; other processes get a writer that does nothing."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        # Non-finite values (e.g. the loss of an interval whose steps were all skipped) -> null.
        record = {"step": int(step), **{k: v if math.isfinite(v) else None
                                         for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and value is not None:
                self._tb.add_scalar(key, value, step)

    def write_images(self, step: int, tag: str, grid: np.ndarray) -> None:
        if self.enabled:
            self._tb.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
