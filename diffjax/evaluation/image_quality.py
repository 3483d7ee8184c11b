"""Per-image quality against a reference image: PSNR (all pixels or the missing ones) and SSIM."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

SSIM_FILTER_SIZE, SSIM_FILTER_SIGMA = 11, 1.5  # Wang et al. 2004, as dm_pix's defaults


def psnr(a, b) -> np.ndarray:
    """PSNR in dB per image of uint8 [N, H, W, C] arrays (peak 255), via dm_pix on [0, 1]."""
    import dm_pix

    a, b = (jnp.asarray(x, jnp.float32) / 255.0 for x in (a, b))
    return np.asarray(dm_pix.psnr(a, b), np.float64)


def ssim(a, b) -> np.ndarray:
    """SSIM per image of uint8 [N, H, W, C] arrays (Gaussian window 11, sigma 1.5, valid
    filtering, k1 = 0.01, k2 = 0.03, averaged over pixels and channels), via dm_pix on [0, 1]."""
    import dm_pix

    a, b = (jnp.asarray(x, jnp.float32) / 255.0 for x in (a, b))
    return np.asarray(dm_pix.ssim(a, b, max_val=1.0, filter_size=SSIM_FILTER_SIZE,
                                  filter_sigma=SSIM_FILTER_SIGMA), np.float64)


def psnr_missing(a, b, mask) -> np.ndarray:
    """PSNR in dB per image over the missing pixels only (mask [N, H, W, 1] == 0)."""
    missing = np.broadcast_to(np.asarray(mask) == 0, np.shape(a))
    err = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2 / 255.0**2
    mse = (err * missing).sum(axis=(1, 2, 3)) / np.maximum(missing.sum(axis=(1, 2, 3)), 1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))
