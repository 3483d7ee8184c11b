"""python -m diffjax.codecs roundtrip --codec vae --path DIR IN OUT.npz

Encodes and decodes images through a codec and reports how well they survive: IN is a folder of
PNG/JPEG images (all one size) or an .npz with uint8 `images` [N, H, W, C]; OUT.npz gets the
uint8 reconstructions as `images`; PSNR and SSIM (mean and standard error over images) are
printed and written next to it as OUT.json. Check a VAE this way before training on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_images(path: str) -> np.ndarray:
    """uint8 [N, H, W, C] from an .npz (`images`) or a folder of images, sorted by name."""
    from diffjax.errors import DataError

    if os.path.isfile(path) and path.endswith(".npz"):
        with np.load(path) as f:
            if "images" not in f:
                raise DataError(f"{path} has no 'images' array (arrays: {list(f.keys())})")
            images = f["images"]
    elif os.path.isdir(path):
        from PIL import Image

        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        images = [np.asarray(Image.open(os.path.join(path, n))) for n in names]
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DataError(f"the images in {path} differ in size: {sorted(shapes)[:4]}")
        images = np.stack(images)
    else:
        raise FileNotFoundError(f"{path} is neither an .npz file nor a folder of images")
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"{path}: expected uint8 [N, H, W, C] images, got {images.dtype} "
                        f"{images.shape}")
    return images[..., :3] if images.shape[-1] == 4 else images


def roundtrip(codec_name: str, options: dict, images: np.ndarray, batch_size: int = 32,
              seed: int = 0, sample: bool = False) -> np.ndarray:
    """uint8 reconstructions decode(encode(images)) of uint8 [N, H, W, C] images; encode takes
    the posterior mean unless `sample`."""
    import jax

    from diffjax.codecs import CODECS, make_codec, to_uint8
    from diffjax.options import from_mapping

    entry = CODECS.get(codec_name)
    opts = (from_mapping(entry.options, options, f"codec.{codec_name}")
            if entry.options is not None else None)
    codec = make_codec(codec_name, opts, images.shape[1:])

    @jax.jit
    def run(params, batch, key):
        x = codec.encode(params, batch.astype("float32") / 127.5 - 1.0,
                         key if sample else None)
        return to_uint8(codec.decode(params, x))

    out = []
    for i, start in enumerate(range(0, len(images), batch_size)):
        chunk = images[start:start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]),
                                                 np.uint8)])
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        out.append(np.asarray(run(codec.params, padded, key))[:len(chunk)])
    return np.concatenate(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffjax.codecs")
    sub = parser.add_subparsers(dest="command", required=True)
    rt = sub.add_parser("roundtrip", help="encode + decode images, report PSNR and SSIM")
    rt.add_argument("--codec", default="vae", help="a registered codec (vae, sd_vae, pixels)")
    rt.add_argument("--path", default="", help="the autoencoder: a diffusers AutoencoderKL "
                    "folder or a --mode=train_autoencoder workdir")
    rt.add_argument("--sample", action="store_true", help="encode z ~ q(z|x), not its mean")
    rt.add_argument("--batch_size", type=int, default=32)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("input", help="a folder of images or an .npz with uint8 `images`")
    rt.add_argument("output", help="OUT.npz: the reconstructions as uint8 `images`")
    args = parser.parse_args(argv)
    from diffjax.errors import ConfigError, DataError
    from diffjax.evaluation import image_quality

    try:
        images = read_images(args.input)
        options = {"path": args.path} if args.codec != "pixels" else {}
        recon = roundtrip(args.codec, options, images, args.batch_size, args.seed, args.sample)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    psnr, ssim = image_quality.psnr(recon, images), image_quality.ssim(recon, images)
    se = lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0  # noqa: E731
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    np.savez(args.output, images=recon)
    result = {"codec": args.codec, "path": args.path, "input": args.input,
              "num_images": int(len(images)), "psnr_db": float(np.mean(psnr)),
              "psnr_db_stderr": se(psnr), "ssim": float(np.mean(ssim)), "ssim_stderr": se(ssim),
              "latent": "sample" if args.sample else "mean"}
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump(result, f, indent=2)
    print(f"{len(images)} images through {args.codec}: PSNR {result['psnr_db']:.2f} +- "
          f"{result['psnr_db_stderr']:.2f} dB  SSIM {result['ssim']:.4f} +- "
          f"{result['ssim_stderr']:.4f}  -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
