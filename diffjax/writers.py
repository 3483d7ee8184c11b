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


def plot_loss_curve(metrics_path: str, out_path: str) -> None:
    """Plots loss (and EMA-smoothed loss, and val_loss where logged) against step from
    metrics.jsonl into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if r.get("loss") is not None]
    if not records:
        return
    steps = np.array([r["step"] for r in records])
    loss = np.array([r["loss"] for r in records])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, loss, alpha=0.4, label="loss")
    if len(loss) > 5:
        smooth, acc = [], loss[0]
        for value in loss:
            acc = 0.9 * acc + 0.1 * value
            smooth.append(acc)
        ax.plot(steps, smooth, label="smoothed")
    val = [r for r in read_metrics(metrics_path) if r.get("val_loss") is not None]
    if val:  # training.val_every_steps: the loss on held-out data at fixed noise levels
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val_loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
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
