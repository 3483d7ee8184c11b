"""Image sets and statistics on disk: folders of PNG/JPEG, .npz with `images` or `mu`/`sigma`.

Key names follow pytorch-fid and TTUR (`mu`, `sigma`), so a published statistics file such as
TTUR's `fid_stats_cifar10_train.npz` can be used as is. Sample files of OpenAI's
guided-diffusion keep images in `arr_0`, which is accepted too.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from diffjax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class ImageSet:
    """A set of images: `batches(n)` yields [<=n, H, W, C] uint8 arrays; `num_images`."""

    def __init__(self, path: str):
        self.path = path
        self.files: list[str] = []
        self.array: np.ndarray | None = None
        if os.path.isdir(path):
            self.files = sorted(
                os.path.join(path, f)
                for f in os.listdir(path)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not self.files:
                raise DataError(
                    f"{path} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
                )
        else:
            self.array = load_npz(path)["images"]

    @property
    def num_images(self) -> int:
        return len(self.files) if self.array is None else len(self.array)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if self.array is not None:
            for start in range(0, len(self.array), batch_size):
                yield self.array[start : start + batch_size]
            return
        shape = None
        for start in range(0, len(self.files), batch_size):
            batch = []
            for f in self.files[start : start + batch_size]:
                batch.append(read_image(f))
                shape = shape or batch[-1].shape
                if batch[-1].shape != shape:
                    raise DataError(
                        f"{f} has shape {batch[-1].shape} but {self.files[0]} has "
                        f"{shape}; the images of a folder must share one size and "
                        f"channel count"
                    )
            yield np.stack(batch)


def read_image(path: str) -> np.ndarray:
    """[H, W, 3] uint8 (RGB, as pytorch-fid's .convert('RGB')) or [H, W, 1] for grayscale files."""
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("L") if im.mode in ("L", "I;16", "1") else im.convert("RGB"))
    return array[..., None] if array.ndim == 2 else array


def load_npz(path: str) -> dict[str, np.ndarray]:
    """{'images': [N, H, W, C] uint8} or {'mu': [d], 'sigma': [d, d]} (+ 'features' if saved)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is neither a folder of images nor a .npz file")
    if not path.endswith(".npz"):
        raise DataError(
            f"{path}: expected a folder of {'/'.join(IMAGE_EXTENSIONS)} images or a .npz file"
        )
    with np.load(path) as f:
        keys = set(f.files)
        if {"mu", "sigma"} <= keys:
            out = {"mu": f["mu"], "sigma": f["sigma"]}
            if "features" in keys:
                out["features"] = f["features"]
            return out
        key = "images" if "images" in keys else "arr_0" if "arr_0" in keys else None
        if key is None:
            raise DataError(
                f"{path} has keys {sorted(keys)}; expected uint8 'images' [N, H, W, C] "
                f"or statistics 'mu' and 'sigma'"
            )
        images = f[key]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise DataError(
            f"{path}: '{key}' must be uint8 [N, H, W, C] (NHWC) with C in (1, 3); got "
            f"{images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise DataError(f"{path}: '{key}' holds no images")
    return {"images": images}


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **extra) -> str:
    """Writes `mu` [d] and `sigma` [d, d] (pytorch-fid / TTUR key names) plus `extra` arrays."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, mu=mu, sigma=sigma, **extra)
    os.replace(tmp, path)
    return path
