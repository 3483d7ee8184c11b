"""--mode=dry_run: the resolved config, the data's shape and the parameter count; nothing runs."""

from diffjax.experiment import Experiment


def run(config, workdir=None, fresh: bool = False, record=None) -> None:
    print(config)
    exp = Experiment(config, load_data=False)
    print(f"image_shape: {exp.image_shape}  x_shape: {exp.x_shape}  "
          f"num_classes: {exp.num_classes}")
    print(f"params: {exp.num_params()}")
