"""--mode=dry_run: the resolved config, the data's shape and the parameter count; nothing runs."""

from diffjax.experiment import Experiment


def run(config, workdir=None, fresh: bool = False, record=None) -> None:
    print(config)
    exp = Experiment(config, load_data=False)
    print(f"image_shape: {exp.image_shape}  x_shape: {exp.x_shape}  "
          f"num_classes: {exp.num_classes}")
    params, fixed = exp.num_params(), exp.network.num_fixed_scalars
    # Non-trained constants a network's paper counts as parameters (DiT's position embedding).
    extra = f" (+{fixed} fixed, non-trained = {params + fixed})" if fixed else ""
    print(f"params: {params}{extra}")
