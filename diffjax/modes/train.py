"""--mode=train: train config in WORKDIR, resuming from its newest checkpoint."""

from diffjax.experiment import Experiment
from diffjax.training import loop


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    loop.train(Experiment(config, workdir), fresh=fresh, record=record)
