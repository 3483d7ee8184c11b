"""A sweep is one Python file; this module loads it, expands it into points and says which
points are finished.

A sweep file defines, at module level:
  BASE_CONFIG  path of the config file every point starts from (relative to the repo root);
  GRID         {dotted config key: [values]}: every combination is a point (optional);
  POINTS       [{dotted config key: value}, ...]: more points, added after the grid (optional);
  SEEDS        config.seed values; every point runs once per seed (default [0]);
  BUDGET       {dotted key: value} applied to every point first (steps, batch, logging, ...);
  EVAL         {dotted key: value} for the evaluation run (`--mode=eval`) of every point:
               eval.* and sampling.* settings (optional; {} evaluates with the run's config);
  NAME         the sweep's name (default: the file's name without .py).
The module docstring describes the sweep; it heads the results table.

A point's training overrides are BUDGET, then its grid/list values, then `seed`. Its workdir is
RUNS_DIR/NAME/<hash>, where <hash> is the first 10 hex digits of the SHA-256 of those overrides
as canonical JSON (sorted keys, no spaces), so it changes exactly when the training does. A point
is *trained* when its final checkpoint (step training.num_steps) has committed (its manifest
exists), and *evaluated* when WORKDIR/eval/ holds a result of that step whose sampler settings,
sample count, seeds, aggregation and reference split are those EVAL asks for.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import itertools
import json
import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # config files import configs.base

SWEEP_FIELDS = ("BASE_CONFIG", "GRID", "POINTS", "SEEDS", "BUDGET", "EVAL", "NAME")
POINT_FILE = "sweep_point.json"  # written into each workdir: the sweep, hash and overrides
TIMES_FILE = "sweep_times.json"  # wall seconds of the train and eval subprocesses


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The contents of a sweep file (see the module docstring)."""

    name: str
    path: str
    description: str
    base_config: str
    grid: dict[str, list]
    points: list[dict[str, Any]]
    seeds: list[int]
    budget: dict[str, Any]
    eval: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: its training overrides, the subset that varies across the sweep
    (grid/list values and seed), its hash and workdir."""

    overrides: dict[str, Any]
    varying: dict[str, Any]
    hash: str
    workdir: str


def _fail(path: str, message: str) -> None:
    raise ValueError(f"sweep {path}: {message}")


def load_sweep(path: str) -> Sweep:
    """Reads and checks a sweep file; raises ValueError naming the file and the bad field."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file {path} does not exist")
    spec = importlib.util.spec_from_file_location("_diffjax_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    unknown = sorted(k for k in vars(module) if k.isupper() and k not in SWEEP_FIELDS)
    if unknown:
        _fail(path, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(SWEEP_FIELDS)}")
    if not hasattr(module, "BASE_CONFIG"):
        _fail(path, "BASE_CONFIG is missing (the config file every point starts from, e.g. "
                    "'configs/default.py')")
    grid = dict(getattr(module, "GRID", {}))
    points = [dict(p) for p in getattr(module, "POINTS", [])]
    seeds = list(getattr(module, "SEEDS", [0]))
    budget = dict(getattr(module, "BUDGET", {}))
    evaluation = dict(getattr(module, "EVAL", {}))
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            _fail(path, f"GRID[{key!r}]={values!r} must be a non-empty list of values")
        if len(set(map(_canonical, values))) != len(values):
            _fail(path, f"GRID[{key!r}]={values!r} repeats a value")
    if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        _fail(path, f"SEEDS={seeds!r} must be a non-empty list of distinct ints")
    for key in (*grid, *(k for p in points for k in p)):
        if key in budget:
            _fail(path, f"{key!r} is in BUDGET and also varies (GRID/POINTS); keep it in one")
        if key == "seed":
            _fail(path, "'seed' varies through SEEDS, not GRID/POINTS")
    bad_eval = sorted(k for k in evaluation if k.split(".")[0] not in ("eval", "sampling", "data"))
    if bad_eval:
        _fail(path, f"EVAL keys must be eval.*, sampling.* or data.* (the reference set); got "
                    f"{', '.join(bad_eval)}")
    name = getattr(module, "NAME", os.path.splitext(os.path.basename(path))[0])
    base = module.BASE_CONFIG
    if not os.path.isfile(base if os.path.isabs(base) else os.path.join(ROOT, base)):
        _fail(path, f"BASE_CONFIG={base!r} does not exist (paths are relative to {ROOT})")
    return Sweep(name=name, path=path, description=(module.__doc__ or "").strip(),
                 base_config=base, grid=grid, points=points, seeds=seeds, budget=budget,
                 eval=evaluation)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def point_hash(overrides: dict[str, Any]) -> str:
    """First 10 hex digits of SHA-256 of the overrides as canonical JSON (sorted keys, no
    spaces; tuples as lists). {'seed': 0} -> 'bd04888434'."""
    return hashlib.sha256(_canonical(overrides).encode()).hexdigest()[:10]


def expand(sweep: Sweep, runs_dir: str) -> list[Point]:
    """The points of a sweep in order: grid combinations (last key fastest), then POINTS, each
    for every seed (seeds fastest). A sweep without GRID and POINTS is the base config alone."""
    keys = list(sweep.grid)
    choices = [dict(zip(keys, combo)) for combo in itertools.product(*sweep.grid.values())]
    choices = (choices if keys else []) + sweep.points
    if not choices:
        choices = [{}]
    result, seen = [], {}
    for choice in choices:
        for seed in sweep.seeds:
            varying = {**choice, "seed": seed}
            overrides = {**sweep.budget, **varying}
            digest = point_hash(overrides)
            if digest in seen:
                raise ValueError(f"sweep {sweep.path}: points {seen[digest]} and {varying} have "
                                 f"the same overrides")
            seen[digest] = varying
            result.append(Point(overrides, varying, digest,
                                os.path.join(runs_dir, sweep.name, digest)))
    return result


def resolve_config(base_config: str, overrides: dict[str, Any], where: str = "overrides"):
    """The base config file's get_config() with dotted-key overrides applied (lists become
    tuples), validated as launch.py validates it (diffjax.experiment.validate, no data read).
    Raises ValueError naming an unknown key and the fields its parent has, or a value of the
    wrong type."""
    from diffjax import config_lib

    path = base_config if os.path.isabs(base_config) else os.path.join(ROOT, base_config)
    config = config_lib.load_config_file(path)
    for key, value in overrides.items():
        if missing := config_lib.missing_field(config, key):
            raise ValueError(f"{where}: config.{key} is not a config field: {missing}")
        value = tuple(value) if isinstance(value, list) else value
        try:
            config_lib.set_field(config, key, value)
        except TypeError as e:
            raise ValueError(f"{where}: config.{key}={value!r} has the wrong type: {e}") from e
    from diffjax.experiment import validate

    validate(config, devices=False)  # this machine need not be the one that runs the point
    return config


def flag_value(value) -> str:
    """A config value as launch.py's --config.KEY=VALUE flag text: tuples as (a,b), strings
    inside tuples quoted, bools as True/False."""
    if isinstance(value, (list, tuple)):
        inner = ",".join(repr(v) if isinstance(v, str) else flag_value(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _shown_path(path: str) -> str:
    """Paths under the repo root relative to it (commands run from the root), others absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def train_command(sweep: Sweep, point: Point, python: str = "python") -> list[str]:
    """launch.py arguments that train `point` (run from the repo root)."""
    return [python, "launch.py", f"--config={sweep.base_config}",
            f"--workdir={_shown_path(point.workdir)}",
            *(f"--config.{k}={flag_value(v)}" for k, v in point.overrides.items())]


def eval_command(sweep: Sweep, point: Point, python: str = "python") -> list[str]:
    """launch.py arguments that evaluate `point`'s final checkpoint with EVAL's settings (the rest
    of the config comes from WORKDIR/config.json)."""
    return [python, "launch.py", "--mode=eval", f"--config={sweep.base_config}",
            f"--workdir={_shown_path(point.workdir)}",
            *(f"--config.{k}={flag_value(v)}" for k, v in sweep.eval.items())]


def _json_normal(value):
    return json.loads(json.dumps(value, default=list))


def expected_eval(sweep: Sweep, point: Point) -> dict[str, Any]:
    """The fields an eval result of `point` must have to count as EVAL's: step, sampling config,
    sample count, seeds, aggregation and reference split."""
    config = resolve_config(sweep.base_config, {**point.overrides, **sweep.eval},
                            where=f"sweep {sweep.path}, point {point.varying}")
    ev = config.eval
    return {"step": config.training.num_steps, "num_samples": ev.num_samples,
            "seeds": [ev.seed + i for i in range(ev.num_seeds)], "aggregate": ev.aggregate,
            "sampling_config": _json_normal(config.sampling.to_dict()),
            "reference_split": config.data.split}


def final_step(sweep: Sweep, point: Point) -> int:
    return resolve_config(sweep.base_config, point.overrides).training.num_steps


def is_trained(point: Point, num_steps: int) -> bool:
    """The final checkpoint has committed: checkpoints/<num_steps>/ has its manifest."""
    return os.path.isfile(os.path.join(point.workdir, "checkpoints", str(num_steps),
                                       "diffjax_manifest.json"))


def find_eval(point: Point, expected: dict[str, Any]) -> str | None:
    """Path of an eval JSON in WORKDIR/eval/ matching `expected` (see expected_eval), or None."""
    for path in sorted(glob.glob(os.path.join(point.workdir, "eval", "eval_step*.json"))):
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue
        got = {"step": result.get("step"), "num_samples": result.get("num_samples"),
               "seeds": result.get("seeds"), "aggregate": result.get("aggregate"),
               "sampling_config": result.get("sampling_config"),
               "reference_split": result.get("reference", {}).get("split")}
        if got == expected:
            return path
    return None


def status(sweep: Sweep, point: Point) -> dict[str, Any]:
    """{'trained': bool, 'eval_path': str or None} of a point."""
    trained = is_trained(point, final_step(sweep, point))
    return {"trained": trained,
            "eval_path": find_eval(point, expected_eval(sweep, point)) if trained else None}


def write_point_file(sweep: Sweep, point: Point) -> str:
    """Writes WORKDIR/sweep_point.json: the sweep, base config, hash and overrides."""
    os.makedirs(point.workdir, exist_ok=True)
    path = os.path.join(point.workdir, POINT_FILE)
    with open(path, "w") as f:
        json.dump({"sweep": sweep.name, "sweep_file": _shown_path(sweep.path),
                   "base_config": sweep.base_config, "hash": point.hash,
                   "overrides": point.overrides, "varying": point.varying, "eval": sweep.eval},
                  f, indent=2)
    return path
