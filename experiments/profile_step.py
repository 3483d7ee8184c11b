"""Where a train step's time goes: --mode=benchmark's steps under the JAX profiler, the XLA CPU
ops of the timed steps grouped by kind.

    python -m experiments.profile_step                                   # configs/default.py
    python -m experiments.profile_step --config configs/cifar10_ddpm.py --batch_size 64

Prints one JSON line: milliseconds per step and share of each kind (library convolutions and
dots, i.e. YNNPACK/XNNPACK/oneDNN fusions; XLA's own dots and convolutions; transposes and
copies; elementwise and reduction fusions; collectives), and the ten costliest ops. Times are
summed over the device threads, so with more virtual devices than cores they include time a
thread waited for a core; compare shares, not totals, across device counts.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

STEP_EVENT = "CommonPjRtLoadedExecutable::Execute (jit_train_step)"
_RUNTIME = ("ThunkExecutor", "Wait", "Rendezvous", "CommonPjRt", "Handle", "Allocate",
            "TaskDispatcher", "SlinkyThreadPool", "InvokeRendezvous", "[")
_HOST_THREADS = ("python", "Compiler", "codegen")


def op_kind(name: str) -> str | None:
    """The kind of an XLA CPU op event by its HLO name; None for runtime bookkeeping events."""
    if name.startswith(_RUNTIME) or name in ("while", "call", "conditional"):
        return None
    base = re.sub(r"[.\d]+$", "", name)
    if base.startswith(("ynn_fusion", "xnn_fusion", "onednn", "__onednn")):
        return "library conv/dot"
    if base.startswith(("dot", "convolution")):
        return "xla dot/conv"
    if "transpose" in base or base.startswith("copy"):
        return "transpose/copy"
    if base.startswith(("all-reduce", "reduce-scatter", "all-gather", "collective-permute")):
        return "collectives"
    return "elementwise/reduce"


def step_breakdown(trace: dict, skip_steps: int = 1) -> dict:
    """Per-step op time by kind from a Chrome trace (the profiler's vm.trace.json): the ops that
    start between consecutive train-step launches, after `skip_steps` launches, on the non-host
    threads. Returns {'steps', 'ms_per_step', 'kinds': {kind: {'ms', 'share'}}, 'top_ops'}."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    starts = sorted(e["ts"] for e in events if e["name"] == STEP_EVENT)
    n = len(starts) - skip_steps - 1  # whole steps: from each counted launch to the next
    if n < 1:
        raise ValueError(f"the trace has {len(starts)} train-step launches; "
                         f"need at least {skip_steps + 2}")
    lo, hi = starts[skip_steps], starts[-1]
    kinds, ops = collections.Counter(), collections.Counter()
    for e in events:
        if threads.get((e["pid"], e["tid"]), "").startswith(_HOST_THREADS):
            continue
        kind = op_kind(e["name"])
        if kind and lo <= e["ts"] < hi:
            kinds[kind] += e["dur"]
            ops[e["name"]] += e["dur"]
    total = sum(kinds.values())
    return {"steps": n, "ms_per_step": round(total / 1e3 / n, 2),
            "kinds": {k: {"ms": round(t / 1e3 / n, 2), "share": round(t / total, 4)}
                      for k, t in kinds.most_common()},
            "top_ops": [[k, round(t / 1e3 / n, 2)] for k, t in ops.most_common(10)]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    parser.add_argument("--devices", type=int, default=0, help="0: the config's mesh.cpu_devices")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    import jax

    from diffjax import config_lib
    from diffjax.experiment import Experiment, configure_backend
    from diffjax.modes.benchmark import benchmark

    config = config_lib.load_config_file(args.config)
    if args.batch_size:
        config.training.batch_size = args.batch_size
    if args.devices:
        config.mesh.cpu_devices = args.devices
    configure_backend(config)
    config.benchmark.num_steps, config.benchmark.warmup_steps = args.steps, 2
    config.benchmark.sample_steps = 0
    exp = Experiment(config, load_data=False)
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level, options.host_tracer_level = 0, 3
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, profiler_options=options):
            result = benchmark(exp)
        path = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.trace.json.gz"))[0]
        with gzip.open(path) as f:
            trace = json.load(f)
    # the first timed launch follows the warm-up ones; only steps between launches are counted
    out = {"config": args.config, "batch": exp.training.batch_size,
           "step_s_profiled": result["step_s"],
           **step_breakdown(trace, skip_steps=1)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
