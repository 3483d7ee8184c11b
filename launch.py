"""diffjax's one entry point: python launch.py --workdir DIR [--config FILE] [--mode MODE].

Modes: train (resumes from WORKDIR), sample, inpaint, eval (FID/KID/IS), dry_run, benchmark,
train_autoencoder (a latent model's first stage). Any config field can be overridden:
--config.optim.lr=1e-4.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # config files import configs.base
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.py")

from diffjax.modes import MODES, RUN_MODES  # noqa: E402  (light: no JAX)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


LAUNCH_RECORD = "launch.json"  # WORKDIR/launch.json: the config file and flags that trained it


def _flag(argv: list[str], name: str) -> str | None:
    """The value of --name=VALUE or --name VALUE in argv (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _default_config_file(argv: list[str]) -> str:
    """configs/default.py; for a mode that reads a WORKDIR (RUN_MODES) without --config, the
    config file that trained it (WORKDIR/launch.json), so that the modules it imports (a user's
    plug-ins) are registered again."""
    workdir, mode = _flag(argv, "workdir"), _flag(argv, "mode")
    if workdir and mode in RUN_MODES and _flag(argv, "config") is None:
        path = os.path.join(workdir, LAUNCH_RECORD)
        if os.path.exists(path):
            with open(path) as f:
                config_file = json.load(f).get("config_file", "")
            if os.path.isfile(config_file):
                return config_file
    return DEFAULT_CONFIG


def _unknown_override(argv: list[str]) -> str | None:
    """Describes the first --config.a.b=... override whose key the chosen config file lacks."""
    from diffjax import config_lib

    config = config_lib.load_config_file(_flag(argv, "config") or _default_config_file(argv))
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            if missing := config_lib.missing_field(config, key):
                return f"unknown config key config.{key}: {missing}"
    return None


try:  # config_flags applies --config.x.y overrides here, at definition time
    _CONFIG = config_flags.DEFINE_config_file(
        "config", _default_config_file(sys.argv[1:]), "Experiment config file.", lock_config=True)
except (AttributeError, KeyError):
    _message = _unknown_override(sys.argv[1:])
    if _message is None or os.environ.get("DIFFJAX_TRACEBACK"):
        raise
    _fail(_message)

flags.DEFINE_string("workdir", None, "Run directory (config.json, checkpoints/, samples/, ...).")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_bool("fresh", False, "Train: move an existing WORKDIR aside to WORKDIR.prev-<time> "
                  "and start a new run there (nothing is deleted).")
flags.DEFINE_string("coordinator_address", "",
                    "jax.distributed coordinator host:port (multi-host).")
flags.DEFINE_integer("num_processes", 0, "jax.distributed: number of processes.")
flags.DEFINE_integer("process_id", -1, "jax.distributed: this process's id.")
FLAGS = flags.FLAGS


def _with_saved_config(config, workdir: str):
    """The config a run was trained with (WORKDIR/config.json), with this command's --config.*
    overrides on top, so sampling and evaluation need not repeat the training overrides."""
    from diffjax import config_lib

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return config
    with open(path) as f:
        saved = json.load(f)
    overridden = {arg[len("--config."):].split("=", 1)[0] for arg in sys.argv[1:]
                  if arg.startswith("--config.")}
    merged = config_lib.merge_saved(config, saved, overridden)
    print(f"using the run's config {path}"
          + (f" with overrides: {', '.join(sorted(overridden))}" if overridden else ""))
    return merged


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    mode = FLAGS.mode
    if mode in ("train", "train_autoencoder", *RUN_MODES) and not FLAGS.workdir:
        raise app.UsageError(f"--workdir is required for --mode={mode}")
    if mode in RUN_MODES:
        config = _with_saved_config(config, FLAGS.workdir)
    from diffjax import experiment, modes, parallel

    experiment.configure_backend(config)
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    record = {"config_file": os.path.abspath(config_flags.get_config_filename(FLAGS["config"])),
              "argv": sys.argv[1:]}
    modes.run(mode, config, FLAGS.workdir, fresh=FLAGS.fresh, record=record)


def run() -> None:
    from diffjax.errors import ConfigError, DataError, NonFiniteError, Preempted

    try:
        app.run(main)
    except Preempted as e:  # a clean stop: the checkpoint is committed
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except (ConfigError, DataError, NonFiniteError, OSError) as e:
        # Config, data, numerics and disk errors (missing files included): one clear message, no
        # traceback. Anything else is a bug and keeps its traceback.
        if os.environ.get("DIFFJAX_TRACEBACK"):
            raise
        _fail(f"{e}\n(set DIFFJAX_TRACEBACK=1 to see the traceback)")


if __name__ == "__main__":
    run()
