"""Result tables of a sweep: python -m experiments.table SWEEP.py [--out DIR].

Reads every point's workdir (metrics.jsonl, eval/*.json, sweep_times.json) and writes, into
experiments/results/<sweep name>/ (or --out):
  table.md         the sweep's description, budget, eval settings and the command that
                   reproduces it, a table with one row per point and, with several seeds, a
                   table of means +- standard deviations over seeds;
  table.csv        the per-point rows with full-precision values;
  loss_curves.png  training loss (and validation loss) against step, one panel per point;
  samples.png      per point, the first samples its evaluation scored (the PNG its eval result
                   has beside it), else its final training grid (samples/grid_<step>.png).

Per point: `loss` is the mean logged training loss over the last 10% of the steps; `val loss`
the last logged validation loss (training.val_every_steps); KID (x 10^3, +- its standard
deviation over subsets) and FID from the eval result EVAL asks for; samples/s the sampling
throughput of that evaluation (compilation excluded); train img/s the median logged training
throughput after the first logging interval (which includes compilation).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import shlex
import statistics
import sys
from typing import Any

import numpy as np

from experiments import sweep as sweep_lib

METRICS = ("final_loss", "val_loss", "kid", "kid_std", "fid", "nfe", "samples_per_sec",
           "train_images_per_sec", "train_seconds", "eval_seconds")


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def point_row(sweep: sweep_lib.Sweep, point: sweep_lib.Point) -> dict[str, Any]:
    """The metrics of one point (None where missing) and its status: finished (evaluated),
    trained, partial (step N) or missing."""
    num_steps = sweep_lib.final_step(sweep, point)
    records = _read_jsonl(os.path.join(point.workdir, "metrics.jsonl"))
    losses = [r for r in records if r.get("loss") is not None]
    last_step = max((r["step"] for r in records), default=0)
    tail_start = num_steps - max(1, num_steps // 10)
    tail = [r["loss"] for r in losses if r["step"] > tail_start] or [r["loss"] for r in losses[-1:]]
    vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
    speeds = [r["images_per_sec"] for r in losses[1:] if r.get("images_per_sec")]
    row: dict[str, Any] = {
        "final_loss": float(np.mean(tail)) if tail else None,
        "val_loss": vals[-1] if vals else None,
        "train_images_per_sec": statistics.median(speeds) if speeds else None,
    }
    state = sweep_lib.status(sweep, point)
    result = {}
    if state["eval_path"]:
        with open(state["eval_path"]) as f:
            result = json.load(f)
    row.update({"kid": result.get("kid_mean"), "kid_std": result.get("kid_std"),
                "fid": result.get("fid"), "nfe": result.get("nfe"),
                "samples_per_sec": result.get("samples_per_sec")})
    times_path = os.path.join(point.workdir, sweep_lib.TIMES_FILE)
    times = {}
    if os.path.exists(times_path):
        with open(times_path) as f:
            times = json.load(f)
    row.update({"train_seconds": times.get("train_seconds"),
                "eval_seconds": times.get("eval_seconds")})
    row["eval_path"] = state["eval_path"]
    if state["eval_path"]:
        row["status"] = "finished"
    elif state["trained"]:
        row["status"] = "trained"
    elif records:
        row["status"] = f"partial (step {last_step})"
    else:
        row["status"] = "missing"
    return row


def collect(sweep: sweep_lib.Sweep, runs_dir: str) -> list[dict[str, Any]]:
    """One row per point: its varying values, hash, status and metrics."""
    return [{"varying": p.varying, "hash": p.hash, "point": p, **point_row(sweep, p)}
            for p in sweep_lib.expand(sweep, runs_dir)]


def _varying_keys(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["varying"] if k not in keys]
    return keys


def _short_names(keys: list[str]) -> dict[str, str]:
    """Last dotted component of each key, or the whole key where two share it."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _kid(mean, std) -> str:
    if mean is None:
        return "—"
    return f"{mean * 1e3:.2f} ± {std * 1e3:.2f}" if std is not None else f"{mean * 1e3:.2f}"


def _settings(items: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={sweep_lib.flag_value(v)}`" for k, v in items.items()) or "none"


def markdown(sweep: sweep_lib.Sweep, rows: list[dict]) -> str:
    """The table.md text (see the module docstring)."""
    keys = _varying_keys(rows)
    names = _short_names(keys)
    sweep_file = sweep_lib._shown_path(sweep.path)
    out = [f"# Sweep `{sweep.name}`", ""]
    if sweep.description:
        out += [sweep.description, ""]
    out += [f"- Base config: `{sweep.base_config}`",
            f"- Budget (every point): {_settings(sweep.budget)}",
            f"- Evaluation: {_settings(sweep.eval)}",
            f"- Reproduce: `python -m experiments.run {sweep_file} && "
            f"python -m experiments.table {sweep_file}`", "",
            "loss: mean training loss over the last 10% of steps; val loss: last validation "
            "loss; KID x 10^3 (+- std over subsets); samples/s: sampling throughput in the "
            "evaluation; train / eval s: wall seconds of the two launch.py runs.", ""]
    header = [names[k] for k in keys] + ["loss", "val loss", "KID x 10^3", "FID", "NFE",
                                         "samples/s", "train img/s", "train / eval s",
                                         "status", "hash"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["varying"].get(k, "")) for k in keys] + [
            _fmt(row["final_loss"], ".4f"), _fmt(row["val_loss"], ".4f"),
            _kid(row["kid"], row["kid_std"]), _fmt(row["fid"], ".2f"), _fmt(row["nfe"], "g"),
            _fmt(row["samples_per_sec"], ".1f"), _fmt(row["train_images_per_sec"], ".0f"),
            f"{_fmt(row['train_seconds'], '.0f')} / {_fmt(row['eval_seconds'], '.0f')}",
            row["status"], f"`{row['hash']}`"]
        out.append("| " + " | ".join(cells) + " |")
    seeds = sorted({row["varying"].get("seed") for row in rows})
    if len(seeds) > 1:
        out += ["", f"Mean ± standard deviation over seeds {seeds} (n: points with a value):", ""]
        config_keys = [k for k in keys if k != "seed"]
        header = [names[k] for k in config_keys] + ["loss", "val loss", "KID x 10^3", "FID", "n"]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        groups: dict[str, list[dict]] = {}
        for row in rows:
            label = json.dumps({k: row["varying"].get(k) for k in config_keys})
            groups.setdefault(label, []).append(row)
        for members in groups.values():
            def stat(key, scale=1.0, spec=".4f"):
                values = [m[key] * scale for m in members if m[key] is not None]
                if not values:
                    return "—"
                if len(values) == 1:
                    return format(values[0], spec)
                return f"{np.mean(values):{spec}} ± {np.std(values, ddof=1):{spec}}"

            n = sum(m["kid"] is not None for m in members)
            cells = [str(members[0]["varying"].get(k, "")) for k in config_keys] + [
                stat("final_loss"), stat("val_loss"), stat("kid", 1e3, ".2f"),
                stat("fid", 1.0, ".2f"), str(n)]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def csv_text(rows: list[dict]) -> str:
    """table.csv: varying keys (dotted), hash, status, then METRICS (floats as %.6g)."""
    keys = _varying_keys(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*keys, "hash", "status", *METRICS])
    for row in rows:
        values = [row[m] for m in METRICS]
        writer.writerow([*(row["varying"].get(k, "") for k in keys), row["hash"], row["status"],
                         *("" if v is None else format(v, ".6g") for v in values)])
    return buffer.getvalue()


def _panels(plt, count: int, width: float, height: float):
    """A figure with `count` panels, four per row, unused ones hidden."""
    cols = max(1, min(4, count))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return fig, axes


def plot_loss_curves(rows: list[dict], path: str) -> None:
    """One panel per point: logged training loss (and its smoothed curve) and validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = _panels(plt, len(rows), 3.6, 2.8)
    for ax, row in zip(axes.flat, rows):
        records = _read_jsonl(os.path.join(row["point"].workdir, "metrics.jsonl"))
        train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        if train:
            steps, loss = np.array(train).T
            ax.plot(steps, loss, alpha=0.35, color="C0", label="loss")
            smooth = np.array([np.mean(loss[max(0, i - 4):i + 1]) for i in range(len(loss))])
            ax.plot(steps, smooth, color="C0", label="loss (5-log mean)")
        if val:
            ax.plot(*np.array(val).T, "o-", color="C3", label="val loss")
        title = " / ".join(str(v) for k, v in row["varying"].items() if k != "seed")
        title += f" (seed {row['varying'].get('seed')})"
        if row["kid"] is not None:
            title += f"\nKID x 10^3 = {row['kid'] * 1e3:.2f}"
        ax.set_title(title, fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if rows:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def final_grid(point: sweep_lib.Point, eval_path: str | None = None) -> str | None:
    """The grid of the scored samples (the PNG beside the eval result `eval_path`) if there is
    one, else the point's newest training grid (samples/grid_<step>.png), else None."""
    if eval_path and os.path.exists(eval_path[:-len(".json")] + ".png"):
        return eval_path[:-len(".json")] + ".png"
    grids = glob.glob(os.path.join(point.workdir, "samples", "grid_*.png"))
    return max(grids, key=lambda p: int(os.path.basename(p)[5:-4])) if grids else None


def plot_samples(rows: list[dict], path: str) -> None:
    """One panel per point: the samples its KID/FID scored (else its final training grid),
    titled with its values and KID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = _panels(plt, len(rows), 3.2, 3.5)
    for ax, row in zip(axes.flat, rows):
        ax.axis("off")
        grid = final_grid(row["point"], row["eval_path"])
        title = " / ".join(str(v) for k, v in row["varying"].items() if k != "seed")
        if row["kid"] is not None:
            title += f"\nKID x 10^3 = {row['kid'] * 1e3:.2f}"
        ax.set_title(title, fontsize=8)
        if grid:
            ax.imshow(plt.imread(grid), cmap="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build(sweep: sweep_lib.Sweep, runs_dir: str, out_dir: str) -> dict[str, str]:
    """Writes table.md, table.csv, loss_curves.png and samples.png into out_dir; returns their
    paths."""
    rows = collect(sweep, runs_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name)
             for name in ("table.md", "table.csv", "loss_curves.png", "samples.png")}
    with open(paths["table.md"], "w") as f:
        f.write(markdown(sweep, rows))
    with open(paths["table.csv"], "w") as f:
        f.write(csv_text(rows))
    plot_loss_curves(rows, paths["loss_curves.png"])
    plot_samples(rows, paths["samples.png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="the sweep file, e.g. experiments/sweeps/x.py")
    parser.add_argument("--runs_dir", default=os.path.join(sweep_lib.ROOT, "runs"))
    parser.add_argument("--out", default=None,
                        help="output directory (default: experiments/results/<sweep name>)")
    args = parser.parse_args(argv)
    try:
        sweep = sweep_lib.load_sweep(args.sweep)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(sweep_lib.ROOT, "experiments", "results", sweep.name)
    paths = build(sweep, args.runs_dir, out)
    print(open(paths["table.md"]).read())
    print("wrote " + ", ".join(shlex.quote(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
