"""--mode=train: train config in WORKDIR, resuming from its newest checkpoint."""

import json
import os

from diffjax import config_lib
from diffjax.experiment import Experiment
from diffjax.training import loop


def saved_config(workdir: str) -> dict | None:
    """WORKDIR/config.json in the current layout (migrated from the pre-plug-in one), or None."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return config_lib.migrate_legacy(json.load(f))


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    exp = Experiment(config, workdir)
    loop.train(exp, fresh=fresh, record=record, saved_config=saved_config(exp.workdir))
