"""Model factory: builds the network named by `config.model` and checks its fields early."""

import math
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.models.unet import NORM_GROUPS, UNet

__all__ = ["UNet", "build_model", "count_params", "validate_unet_config"]

MODEL_NAMES = ("unet",)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _field(model_cfg: Any, key: str, default: Any = None, required: bool = False) -> Any:
    """Reads `model_cfg[key]` from an ml_collections.ConfigDict or a plain dict."""
    if key in model_cfg:
        return model_cfg[key]
    if required:
        raise ValueError(f"config.model.{key} is missing; it is required for the U-Net")
    return default


def _int_tuple(model_cfg: Any, key: str) -> tuple[int, ...]:
    value = _field(model_cfg, key, required=True)
    if isinstance(value, int) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"config.model.{key}={value!r} must be a tuple or list of ints")
    return tuple(value)


def validate_unet_config(model_cfg: Any, image_shape: tuple[int, int, int]) -> None:
    """Checks `config.model` against the image shape; raises ValueError naming the bad key.

    model_cfg: ConfigDict (or mapping) with the fields listed in `build_model`.
    image_shape: (H, W, C) of the training images.
    """
    name = _field(model_cfg, "name", "unet")
    if name not in MODEL_NAMES:
        raise ValueError(f"config.model.name={name!r} is unknown; allowed: {list(MODEL_NAMES)}")

    height, width, _ = image_shape
    if height != width:
        raise ValueError(
            f"image_shape={tuple(image_shape)} is not square; the U-Net's attn_resolutions are "
            f"heights, so only square images (H == W) are allowed"
        )

    ch = _field(model_cfg, "ch", required=True)
    if not isinstance(ch, int) or ch <= 0 or ch % NORM_GROUPS:
        raise ValueError(
            f"config.model.ch={ch!r} must be a positive multiple of {NORM_GROUPS} "
            f"(GroupNorm uses {NORM_GROUPS} groups), e.g. 64, 128, 192, 256"
        )

    ch_mult = _int_tuple(model_cfg, "ch_mult")
    if not ch_mult or any(m <= 0 for m in ch_mult):
        raise ValueError(f"config.model.ch_mult={ch_mult} must be a non-empty tuple of ints >= 1")

    num_res_blocks = _field(model_cfg, "num_res_blocks", required=True)
    if not isinstance(num_res_blocks, int) or num_res_blocks < 1:
        raise ValueError(f"config.model.num_res_blocks={num_res_blocks!r} must be an int >= 1")

    factor = 2 ** (len(ch_mult) - 1)
    sizes = [height / 2**level for level in range(len(ch_mult))]
    if height % factor:
        shown = " -> ".join(f"{s:g}" for s in sizes)
        raise ValueError(
            f"config.model.ch_mult={ch_mult} has {len(ch_mult)} levels, so the image is halved "
            f"{len(ch_mult) - 1} times and its size must be divisible by 2**{len(ch_mult) - 1}="
            f"{factor}; image size {height} would give level sizes {shown}. Allowed image sizes "
            f"are multiples of {factor} ({', '.join(str(factor * k) for k in range(1, 5))}, ...); "
            f"otherwise use fewer levels in ch_mult"
        )
    level_sizes = [int(s) for s in sizes]

    attn_resolutions = _int_tuple(model_cfg, "attn_resolutions")
    for res in attn_resolutions:
        if res not in level_sizes:
            raise ValueError(
                f"config.model.attn_resolutions={attn_resolutions} contains {res}, which never "
                f"occurs for {height}x{width} images with ch_mult={ch_mult}; the level "
                f"resolutions are {level_sizes}"
            )

    num_heads = _field(model_cfg, "num_heads", 1)
    head_channels = _field(model_cfg, "head_channels", -1)
    for key, value in (("num_heads", num_heads), ("head_channels", head_channels)):
        if not isinstance(value, int):
            raise ValueError(f"config.model.{key}={value!r} must be an int")
    if head_channels <= 0 and num_heads < 1:
        raise ValueError(f"config.model.num_heads={num_heads} must be >= 1 when head_channels <= 0")
    # The middle block always has attention, at the last level's channels.
    attn_channels = {ch * ch_mult[-1]} | {
        ch * mult
        for mult, size in zip(ch_mult, level_sizes, strict=True)
        if size in attn_resolutions
    }
    for channels in sorted(attn_channels):
        if head_channels > 0 and channels % head_channels:
            raise ValueError(
                f"config.model.head_channels={head_channels} does not divide the {channels} "
                f"channels of an attention layer (attention channels: {sorted(attn_channels)})"
            )
        if head_channels <= 0 and channels % num_heads:
            raise ValueError(
                f"config.model.num_heads={num_heads} does not divide the {channels} channels "
                f"of an attention layer (attention channels: {sorted(attn_channels)})"
            )

    dropout = _field(model_cfg, "dropout", required=True)
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"config.model.dropout={dropout!r} must be in [0, 1)")



def build_model(model_cfg: Any, image_shape: tuple[int, int, int], num_classes: int = 0,
                dtype: str = "float32") -> UNet:
    """Builds the network from `config.model` after validating it.

    model_cfg: ConfigDict with name ('unet'), ch, ch_mult, num_res_blocks, attn_resolutions,
        dropout, num_heads, head_channels, resblock_updown, use_scale_shift_norm and
        class_conditional (bool).
    image_shape: (H, W, C) of the images; C is the output channel count.
    num_classes: number of dataset classes; used only if model_cfg.class_conditional.
    dtype: compute dtype of activations and matmuls ('float32' | 'bfloat16',
        config.training.compute_dtype); params are always float32.
    """
    if dtype not in DTYPES:
        raise ValueError(f"config.training.compute_dtype={dtype!r} is unknown; allowed: "
                         f"{', '.join(DTYPES)}")
    validate_unet_config(model_cfg, image_shape)
    class_conditional = bool(_field(model_cfg, "class_conditional", False))
    if class_conditional and num_classes <= 0:
        raise ValueError(
            f"config.model.class_conditional=True but the dataset has num_classes={num_classes}; "
            f"set class_conditional=False or use a labelled dataset"
        )
    return UNet(
        out_channels=image_shape[-1],
        ch=_field(model_cfg, "ch"),
        ch_mult=_int_tuple(model_cfg, "ch_mult"),
        num_res_blocks=_field(model_cfg, "num_res_blocks"),
        attn_resolutions=_int_tuple(model_cfg, "attn_resolutions"),
        dropout=float(_field(model_cfg, "dropout")),
        num_heads=_field(model_cfg, "num_heads", 1),
        head_channels=_field(model_cfg, "head_channels", -1),
        num_classes=num_classes if class_conditional else 0,
        resblock_updown=bool(_field(model_cfg, "resblock_updown", False)),
        use_scale_shift_norm=bool(_field(model_cfg, "use_scale_shift_norm", False)),
        dtype=DTYPES[dtype],
    )


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or jax.ShapeDtypeStruct from eval_shape)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
