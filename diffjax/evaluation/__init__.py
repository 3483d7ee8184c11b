"""Evaluation: the FID Inception-v3 in Flax, its weights, feature statistics and the metrics
(FID, KID, Inception Score, precision/recall) computed the way pytorch-fid, TTUR, torch-fidelity
and Kynkaanniemi et al. compute them.

Modules: `torch_files` (reads torch.save / TorchScript files without torch), `weights` (maps them
onto the Flax tree), `inception` (the network and its input preprocessing), `features`
(jitted, sharded feature extraction), `metrics` (the math), `stats_io` (image folders and .npz
files), `reference` (cached reference statistics of a TFDS split), `evaluator` (scores a
generator against them), `periodic` (FID during training), `scores` (the metric plug-ins),
`image_quality` (PSNR, SSIM); `python -m diffjax.evaluation` (this package's __main__) scores
two image sets.
"""
