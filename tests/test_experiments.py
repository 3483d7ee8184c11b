"""Sweeps: grid expansion, stable hashes, skipping finished points, printed commands and the
result tables built from fixture workdirs (nothing is trained)."""

import json
import os
import textwrap

import matplotlib.image
import numpy as np
import pytest

from experiments import run, table
from experiments import sweep as sweep_lib

SWEEP = '''\
"""A fixture sweep."""
BASE_CONFIG = "configs/default.py"
GRID = {"diffusion.schedule": ["linear", "cosine"], "diffusion.parameterization": ["eps", "v"]}
POINTS = [{"objective.denoising.weighting": "min_snr"}]
SEEDS = [0, 1]
BUDGET = {"training.num_steps": 20, "training.log_every_steps": 5}
EVAL = {"eval.num_samples": 50, "sampling.sampler": "ddim", "sampling.num_steps": 5}
'''


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def fixture_sweep(tmp_path):
    return sweep_lib.load_sweep(_write(tmp_path / "fixture_sweep.py", SWEEP))


def test_grid_expands_to_every_combination_then_the_points_then_the_seeds(fixture_sweep,
                                                                           tmp_path):
    points = sweep_lib.expand(fixture_sweep, str(tmp_path / "runs"))
    assert [p.varying for p in points] == [
        {"diffusion.schedule": s, "diffusion.parameterization": p, "seed": seed}
        for s in ("linear", "cosine") for p in ("eps", "v") for seed in (0, 1)
    ] + [{"objective.denoising.weighting": "min_snr", "seed": 0},
         {"objective.denoising.weighting": "min_snr", "seed": 1}]
    first = points[0]
    assert first.overrides == {"training.num_steps": 20, "training.log_every_steps": 5,
                               "diffusion.schedule": "linear",
                               "diffusion.parameterization": "eps", "seed": 0}
    assert first.workdir == str(tmp_path / "runs" / "fixture_sweep" / first.hash)
    assert len({p.hash for p in points}) == len(points) == 10


def test_point_hash_is_stable_and_ignores_key_order():
    assert sweep_lib.point_hash({"seed": 0}) == "bd04888434"
    assert sweep_lib.point_hash({"diffusion.schedule": "cosine", "training.num_steps": 500,
                                 "seed": 0}) == "bf5f1b7e37"
    assert sweep_lib.point_hash({"seed": 0, "diffusion.schedule": "cosine",
                                 "training.num_steps": 500}) == "bf5f1b7e37"
    assert sweep_lib.point_hash({"model.ch_mult": (1, 2), "seed": 1}) == "8830d5c90b"
    assert sweep_lib.point_hash({"model.ch_mult": [1, 2], "seed": 1}) == "8830d5c90b"


@pytest.mark.parametrize("text, message", [
    ("BASE_CONFIG = 'configs/default.py'\nGRIDS = {}\n", r"unknown field\(s\) GRIDS; allowed"),
    ("GRID = {}\n", r"BASE_CONFIG is missing"),
    ("BASE_CONFIG = 'configs/nope.py'\n", r"BASE_CONFIG='configs/nope.py' does not exist"),
    ("BASE_CONFIG = 'configs/default.py'\nGRID = {'optim.lr': []}\n",
     r"GRID\['optim.lr'\]=\[\] must be a non-empty list"),
    ("BASE_CONFIG = 'configs/default.py'\nGRID = {'optim.lr': [1e-3]}\n"
     "BUDGET = {'optim.lr': 1e-4}\n", r"'optim.lr' is in BUDGET and also varies"),
    ("BASE_CONFIG = 'configs/default.py'\nEVAL = {'optim.lr': 1e-4}\n",
     r"EVAL keys must be eval.\*, sampling.\* or data.\*"),
])
def test_bad_sweep_files_are_rejected_with_the_field(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        sweep_lib.load_sweep(_write(tmp_path / "bad.py", text))


def test_unknown_override_keys_name_the_fields_of_their_parent(tmp_path, capsys):
    path = _write(tmp_path / "typo.py", "BASE_CONFIG = 'configs/default.py'\n"
                                        "GRID = {'diffusion.schedul': ['cosine']}\n")
    assert run.main([path, "--print_commands"]) == 2
    assert ("config.diffusion.schedul is not a config field: config.diffusion has no field "
            "'schedul'; its fields are: cosine, edm, flow_gvp, flow_linear, latent_dim, linear"
            in capsys.readouterr().err)


def test_print_commands_prints_train_and_eval_for_every_point(fixture_sweep, capsys):
    assert run.main([fixture_sweep.path, "--print_commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10
    digest = sweep_lib.point_hash({"training.num_steps": 20, "training.log_every_steps": 5,
                                   "objective.denoising.weighting": "min_snr", "seed": 1})
    assert lines[-1] == (
        f"python launch.py --config=configs/default.py "
        f"--workdir=runs/fixture_sweep/{digest} --config.training.num_steps=20 "
        f"--config.training.log_every_steps=5 --config.objective.denoising.weighting=min_snr "
        f"--config.seed=1 && python launch.py --mode=eval --config=configs/default.py "
        f"--workdir=runs/fixture_sweep/{digest} --config.eval.num_samples=50 "
        f"--config.sampling.sampler=ddim --config.sampling.num_steps=5")


def test_flag_values_parse_as_launch_flags():
    assert sweep_lib.flag_value((1, 2)) == "(1,2)"
    assert sweep_lib.flag_value((8,)) == "(8,)"
    assert sweep_lib.flag_value(("a",)) == "('a',)"
    assert sweep_lib.flag_value(1e-4) == "0.0001"
    assert sweep_lib.flag_value(True) == "True"
    assert sweep_lib.flag_value("train[:90%]") == "train[:90%]"


# ---------------------------------------------------------------------------------------------
# Fixture workdirs: what a trained and evaluated point leaves behind.


def _trained(point, num_steps=20, losses=(), vals=()):
    """metrics.jsonl with `losses` logged every 5 steps (images_per_sec 100 * k), `vals` at
    the steps given, and the final checkpoint's manifest."""
    os.makedirs(os.path.join(point.workdir, "checkpoints", str(num_steps)))
    with open(os.path.join(point.workdir, "checkpoints", str(num_steps),
                           "diffjax_manifest.json"), "w") as f:
        f.write("{}")
    vals = dict(vals)
    with open(os.path.join(point.workdir, "metrics.jsonl"), "w") as f:
        for k, loss in enumerate(losses, 1):
            record = {"step": 5 * k, "loss": loss, "images_per_sec": 100.0 * k}
            if 5 * k in vals:
                record["val_loss"] = vals[5 * k]
            f.write(json.dumps(record) + "\n")


def _evaluated(sweep, point, kid, fid, samples_per_sec, **changes):
    expected = sweep_lib.expected_eval(sweep, point)
    result = {**{k: v for k, v in expected.items() if k != "reference_split"},
              "reference": {"split": expected["reference_split"]}, "kid_mean": kid,
              "kid_std": kid / 10, "fid": fid, "nfe": 5, "samples_per_sec": samples_per_sec,
              **changes}
    os.makedirs(os.path.join(point.workdir, "eval"), exist_ok=True)
    path = os.path.join(point.workdir, "eval", f"eval_step20_ddim5_n50_{len(changes)}.json")
    with open(path, "w") as f:
        json.dump(result, f)


def test_runner_skips_finished_points_and_evaluates_trained_ones(tmp_path):
    path = _write(tmp_path / "small.py", SWEEP.replace("SEEDS = [0, 1]", "SEEDS = [0]")
                  .replace('POINTS = [{"objective.denoising.weighting": "min_snr"}]', "")
                  .replace('"diffusion.parameterization": ["eps", "v"]', ""))
    sweep = sweep_lib.load_sweep(path)
    runs = str(tmp_path / "runs")
    done, trained_only = sweep_lib.expand(sweep, runs)
    _trained(done, losses=[0.5, 0.4, 0.3, 0.2])
    _evaluated(sweep, done, kid=0.01, fid=10.0, samples_per_sec=5.0)
    _trained(trained_only, losses=[0.5])
    # An evaluation with other settings (100 samples) does not count as EVAL's.
    _evaluated(sweep, trained_only, kid=0.02, fid=20.0, samples_per_sec=5.0, num_samples=100)
    assert sweep_lib.status(sweep, done)["eval_path"]
    assert sweep_lib.status(sweep, trained_only) == {"trained": True, "eval_path": None}

    calls = []
    report = run.run_sweep(sweep, runs, executor=lambda argv, log: calls.append(argv) or 0,
                           python="py")
    assert report == {"trained": [], "evaluated": [trained_only.hash],
                      "skipped": [done.hash], "failed": []}
    assert calls == [sweep_lib.eval_command(sweep, trained_only, "py")]
    with open(os.path.join(trained_only.workdir, sweep_lib.POINT_FILE)) as f:
        assert json.load(f)["overrides"] == trained_only.overrides

    # A point with nothing is trained, then evaluated; a failed training skips its evaluation.
    with open(path) as f:
        (tmp_path / "more.py").write_text(f.read().replace('["linear", "cosine"]',
                                                           '["linear", "cosine", "sigmoid"]'))
    sweep3 = sweep_lib.load_sweep(str(tmp_path / "more.py"))
    new = sweep_lib.expand(sweep3, str(tmp_path / "runs3"))[2]
    calls = []
    report = run.run_sweep(sweep3, str(tmp_path / "runs3"),
                           executor=lambda argv, log: calls.append(argv) or 0, python="py")
    assert report["trained"] == [p.hash for p in sweep_lib.expand(sweep3, "x")]
    assert calls[4:] == [sweep_lib.train_command(sweep3, new, "py"),
                         sweep_lib.eval_command(sweep3, new, "py")]
    failing = run.run_sweep(sweep3, str(tmp_path / "runs4"), executor=lambda argv, log: 1)
    assert len(failing["failed"]) == 3 and not failing["evaluated"]


def test_table_builder_turns_fixture_workdirs_into_the_expected_tables(fixture_sweep, tmp_path):
    sweep = sweep_lib.load_sweep(_write(tmp_path / "tab.py", SWEEP.replace(
        '"diffusion.parameterization": ["eps", "v"]', "").replace(
        'POINTS = [{"objective.denoising.weighting": "min_snr"}]', "")))
    runs = str(tmp_path / "runs")
    lin0, lin1, cos0, cos1 = sweep_lib.expand(sweep, runs)
    _trained(lin0, losses=[0.5, 0.4, 0.3, 0.2], vals=[(10, 0.35), (20, 0.25)])
    _evaluated(sweep, lin0, kid=0.012, fid=30.5, samples_per_sec=8.25)
    _trained(lin1, losses=[0.6, 0.5, 0.4, 0.3], vals=[(20, 0.27)])
    _evaluated(sweep, lin1, kid=0.016, fid=32.5, samples_per_sec=8.0)
    with open(os.path.join(lin1.workdir, sweep_lib.TIMES_FILE), "w") as f:
        json.dump({"train_seconds": 61.2, "eval_seconds": 30.4}, f)
    _trained(cos0, losses=[0.4, 0.3])  # trained (the manifest exists), not evaluated
    os.makedirs(os.path.join(lin0.workdir, "samples"))
    for step in (5, 20, 10):  # the newest grid by step, not by name or creation order
        plt_image = np.full((8, 8, 3), step / 20, np.float32)
        matplotlib.image.imsave(os.path.join(lin0.workdir, "samples", f"grid_{step:08d}.png"),
                                plt_image)
    paths = table.build(sweep, runs, str(tmp_path / "out"))

    h = {name: p.hash for name, p in zip(("lin0", "lin1", "cos0", "cos1"),
                                         (lin0, lin1, cos0, cos1))}
    assert open(paths["table.md"]).read() == f"""\
# Sweep `tab`

A fixture sweep.

- Base config: `configs/default.py`
- Budget (every point): `training.num_steps=20`, `training.log_every_steps=5`
- Evaluation: `eval.num_samples=50`, `sampling.sampler=ddim`, `sampling.num_steps=5`
- Reproduce: `python -m experiments.run {sweep_lib._shown_path(sweep.path)} && \
python -m experiments.table {sweep_lib._shown_path(sweep.path)}`

loss: mean training loss over the last 10% of steps; val loss: last validation loss; \
KID x 10^3 (+- std over subsets); samples/s: sampling throughput in the evaluation; \
train / eval s: wall seconds of the two launch.py runs.

| schedule | seed | loss | val loss | KID x 10^3 | FID | NFE | samples/s | train img/s | \
train / eval s | status | hash |
|---|---|---|---|---|---|---|---|---|---|---|---|
| linear | 0 | 0.2000 | 0.2500 | 12.00 ± 1.20 | 30.50 | 5 | 8.2 | 300 | — / — | finished | \
`{h['lin0']}` |
| linear | 1 | 0.3000 | 0.2700 | 16.00 ± 1.60 | 32.50 | 5 | 8.0 | 300 | 61 / 30 | finished | \
`{h['lin1']}` |
| cosine | 0 | 0.3000 | — | — | — | — | — | 200 | — / — | trained | `{h['cos0']}` |
| cosine | 1 | — | — | — | — | — | — | — | — / — | missing | `{h['cos1']}` |

Mean ± standard deviation over seeds [0, 1] (n: points with a value):

| schedule | loss | val loss | KID x 10^3 | FID | n |
|---|---|---|---|---|---|
| linear | 0.2500 ± 0.0707 | 0.2600 ± 0.0141 | 14.00 ± 2.83 | 31.50 ± 1.41 | 2 |
| cosine | 0.3000 | — | — | — | 0 |
"""
    assert open(paths["table.csv"]).read() == f"""\
diffusion.schedule,seed,hash,status,final_loss,val_loss,kid,kid_std,fid,nfe,samples_per_sec,\
train_images_per_sec,train_seconds,eval_seconds
linear,0,{h['lin0']},finished,0.2,0.25,0.012,0.0012,30.5,5,8.25,300,,
linear,1,{h['lin1']},finished,0.3,0.27,0.016,0.0016,32.5,5,8,300,61.2,30.4
cosine,0,{h['cos0']},trained,0.3,,,,,,,200,,
cosine,1,{h['cos1']},missing,,,,,,,,,,
"""
    assert os.path.getsize(paths["loss_curves.png"]) > 1000
    assert table.final_grid(lin0).endswith("grid_00000020.png") and table.final_grid(cos0) is None
    scored = sweep_lib.status(sweep, lin1)["eval_path"][:-len(".json")] + ".png"
    matplotlib.image.imsave(scored, np.zeros((8, 8, 3), np.float32))
    assert table.final_grid(lin1, sweep_lib.status(sweep, lin1)["eval_path"]) == scored
    assert os.path.getsize(paths["samples.png"]) > 1000


def test_execute_streams_the_output_to_the_console_and_the_log(tmp_path, capsys):
    import sys

    log = str(tmp_path / "w" / "train.log")
    code = run.execute([sys.executable, "-c", "import os; print('hello from', os.getcwd())"], log)
    assert code == 0
    assert f"hello from {sweep_lib.ROOT}" in capsys.readouterr().out
    with open(log) as f:
        text = f.read()
    assert text.startswith("$ ") and f"hello from {sweep_lib.ROOT}\n" in text
    assert run.execute([sys.executable, "-c", "raise SystemExit(3)"], log) == 3


def test_sampler_convergence_scores_rmse_in_pixel_range_units_and_the_first_converged_nfe():
    from experiments import sampler_convergence as conv

    reference = np.zeros((2, 4, 4, 1), np.uint8)
    images = reference.copy()
    images[0] = 51  # half the pixels 51/255 = 0.2 off: RMSE sqrt(0.2^2 / 2)
    assert conv.rmse(images, reference) == pytest.approx(0.2 / np.sqrt(2), rel=1e-12)
    assert conv.rmse(reference, reference) == 0.0
    rows = [(10, 0.05, 1.0), (20, 0.019, 1.0), (40, 0.02, 1.0), (100, 0.001, 1.0)]
    assert conv.converged_nfe(rows) == 20
    assert conv.converged_nfe([(10, 0.5, 1.0)]) is None
