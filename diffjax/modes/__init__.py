"""The modes of launch.py, each thin: build the Experiment, then one call. Every mode is
`run(config, workdir, fresh, record) -> None`; record: the launch command (config file and
flags), which training writes to WORKDIR/launch.json."""

MODES = ("train", "sample", "inpaint", "eval", "dry_run", "benchmark", "train_autoencoder",
         "likelihood", "reconstruct_ema", "upsample",
         "complete")
# Modes that read a trained WORKDIR: its saved config is the base for --config overrides.
RUN_MODES = ("sample", "inpaint", "eval", "likelihood", "reconstruct_ema", "upsample",
             "complete")


def run(mode: str, config, workdir: str | None, fresh: bool = False,
        record: dict | None = None) -> None:
    """Runs --mode=`mode` (one of MODES)."""
    import importlib

    module = {"eval": "evaluate"}.get(mode, mode)
    importlib.import_module(f"diffjax.modes.{module}").run(config, workdir, fresh, record)
