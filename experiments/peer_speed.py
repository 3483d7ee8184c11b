"""Speed against the PyTorch peers, measured in one process on this machine.

- train: the DDPM CIFAR-10 U-Net (configs/cifar10_ddpm.py, 35,746,307 params) train step, ours
  (--mode=benchmark's timing) against diffusers' UNet2DModel in the DDPM configuration (Adam,
  the eps MSE of a random timestep, the same dropout), same batch and dtype;
- sample: DDIM images/s on that U-Net (random weights), ours against diffusers' DDIMPipeline;
- features: FID Inception pool3 images/s, ours against the TorchScript network of default_1.pt
  (pytorch-fid's InceptionV3 FID blocks, the weights ours load), on the same images.

    python -m experiments.peer_speed                                  # all, float32
    python -m experiments.peer_speed --parts sample --sample_batches 16 64
    python -m experiments.peer_speed --parts train --bf16             # and torch autocast bf16

Torch runs eagerly (no torch.compile), with torch.set_num_threads(--threads, default all cores),
NCHW unless --channels_last. Prints one JSON line per measurement, with our/peer ratios, and
appends them to experiments/results/peer_speed/results.jsonl with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "peer_speed", "results.jsonl")
DDPM_CIFAR10_PARAMS = 35_746_307


def cpu_model() -> str:
    """lscpu's model name (platform.processor() where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def ddpm_config(batch: int, devices: int, bf16: bool = False):
    from configs import cifar10_ddpm

    config = cifar10_ddpm.get_config()
    config.training.batch_size = batch
    config.mesh.cpu_devices = devices
    config.training.compute_dtype = "bfloat16" if bf16 else "float32"
    return config


def peer_unet(dropout: float = 0.1):
    """diffusers' UNet2DModel as google/ddpm-cifar10-32 configures it."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=dropout, norm_num_groups=32, attention_head_dim=None,
    )


def _torch_setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def torch_train_images_per_s(batch: int, steps: int, warmup: int, threads: int,
                             channels_last: bool, bf16: bool) -> dict:
    torch = _torch_setup(threads)
    model = peer_unet().train()
    params = sum(p.numel() for p in model.parameters())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x0 = torch.rand(batch, 3, 32, 32).mul(2).sub(1).to(memory_format=fmt)
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)

    def step():
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.mse_loss(model(xt, t).sample.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {"params": params, "step_s": round(seconds, 4),
            "train_images_per_s": round(batch / seconds, 3)}


def torch_ddim_images_per_s(batch: int, steps: int, threads: int, channels_last: bool) -> dict:
    torch = _torch_setup(threads)
    from diffusers import DDIMPipeline, DDIMScheduler

    unet = peer_unet().eval()
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)

    def run(seed):
        with torch.no_grad():
            pipe(batch_size=batch, num_inference_steps=steps, output_type="np",
                 generator=torch.Generator().manual_seed(seed))

    run(0)
    start = time.perf_counter()
    run(1)
    return {"sample_images_per_s": round(batch / (time.perf_counter() - start), 3)}


def torch_features_images_per_s(images, batch: int, threads: int) -> dict:
    torch = _torch_setup(threads)
    import torch.nn.functional as F

    from diffjax.evaluation import weights

    net = torch.jit.load(weights.default_weights_path(), map_location="cpu").eval()

    def run():
        with torch.no_grad():
            for start in range(0, len(images), batch):
                x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float()
                x = F.interpolate(x / 255, size=(299, 299), mode="bilinear", align_corners=False)
                net(2 * x - 1)

    run()
    start = time.perf_counter()
    run()
    return {"feature_images_per_s": round(len(images) / (time.perf_counter() - start), 3)}


def ours_train(batch: int, devices: int, steps: int, warmup: int, bf16: bool) -> dict:
    from diffjax.experiment import Experiment
    from diffjax.modes.benchmark import benchmark

    config = ddpm_config(batch, devices, bf16)
    config.benchmark.num_steps, config.benchmark.warmup_steps = steps, warmup
    config.benchmark.sample_steps = 0
    r = benchmark(Experiment(config, load_data=False))
    return {k: r[k] for k in ("params", "devices", "step_s", "train_images_per_s",
                              "achieved_gflop_per_s", "matmul_peak_gflop_per_s", "utilisation")}


def ours_ddim(batch: int, devices: int, steps: int) -> dict:
    from diffjax.experiment import Experiment
    from diffjax.modes.benchmark import _sample_speed

    config = ddpm_config(batch, devices)
    config.sampling.sampler, config.sampling.batch_size = "ddim", batch
    config.benchmark.sample_steps = steps
    exp = Experiment(config, load_data=False)
    r = _sample_speed(exp, exp.init_state())
    return {"sample_images_per_s": r["sample_images_per_s"], "sample_nfe": r["sample_nfe"]}


def ours_features(images, batch: int, devices: int) -> dict:
    from diffjax import parallel
    from diffjax.evaluation import features, weights

    params, _ = weights.load_weights("default")
    extractor = features.InceptionExtractor(params, parallel.make_mesh(devices), batch)
    extractor.extract(images[:batch])
    start = time.perf_counter()
    extractor.extract(images)
    return {"feature_images_per_s": round(len(images) / (time.perf_counter() - start), 3)}


def _ratio(ours: dict, peer: dict, key: str) -> float:
    return round(ours[key] / peer[key], 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["train", "sample", "features"],
                        choices=["train", "sample", "features"])
    parser.add_argument("--devices", type=int, default=4,
                        help="our virtual CPU devices (4: the fastest on 2 cores)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--train_batch", type=int, default=64)
    parser.add_argument("--train_steps", type=int, default=5)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--sample_batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--ddim_steps", type=int, default=10)
    parser.add_argument("--feature_images", type=int, default=200)
    parser.add_argument("--feature_batch", type=int, default=100)
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 against autocast")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    import numpy as np

    common = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": args.threads,
              "torch_channels_last": args.channels_last, "torch_compile": False,
              "devices": args.devices}
    rows = []
    if "train" in args.parts:
        for bf16 in ([False, True] if args.bf16 else [False]):
            ours = ours_train(args.train_batch, args.devices, args.train_steps,
                              args.warmup_steps, bf16)
            peer = torch_train_images_per_s(args.train_batch, args.train_steps,
                                            args.warmup_steps, args.threads,
                                            args.channels_last, bf16)
            if ours["params"] != DDPM_CIFAR10_PARAMS or peer["params"] != DDPM_CIFAR10_PARAMS:
                raise SystemExit(f"parameter counts differ: ours {ours['params']}, diffusers "
                                 f"{peer['params']}, expected {DDPM_CIFAR10_PARAMS}")
            rows.append({"part": "train", "batch": args.train_batch,
                         "dtype": "bfloat16" if bf16 else "float32", "ours": ours,
                         "diffusers": peer,
                         "ratio": _ratio(ours, peer, "train_images_per_s")})
    if "sample" in args.parts:
        for batch in args.sample_batches:
            ours = ours_ddim(batch, args.devices, args.ddim_steps)
            peer = torch_ddim_images_per_s(batch, args.ddim_steps, args.threads,
                                           args.channels_last)
            rows.append({"part": "sample", "sampler": f"ddim{args.ddim_steps}", "batch": batch,
                         "ours": ours, "diffusers": peer,
                         "ratio": _ratio(ours, peer, "sample_images_per_s")})
    if "features" in args.parts:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.feature_images, 32, 32, 3), dtype=np.uint8)
        ours = ours_features(images, args.feature_batch, args.devices)
        peer = torch_features_images_per_s(images, args.feature_batch, args.threads)
        rows.append({"part": "features", "image": "32x32x3", "batch": args.feature_batch,
                     "ours": ours, "pytorch_fid_torchscript": peer,
                     "ratio": _ratio(ours, peer, "feature_images_per_s")})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        for row in rows:
            line = json.dumps({**common, **row})
            print(line, flush=True)
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
