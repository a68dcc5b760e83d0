"""Fidelity of a cached video to the uncached one: per-frame PSNR and SSIM (torchmetrics).

Frames are float arrays in [0, 1], shaped (F, H, W, C) as the pipelines return them, or uint8 arrays as
read back from an mp4. Each metric is computed per frame and averaged over frames; identical videos give
PSNR = inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Fidelity:
    psnr: float  # dB, mean over frames
    ssim: float  # mean over frames

    def __str__(self) -> str:
        return f"PSNR {self.psnr:.2f} dB, SSIM {self.ssim:.4f}"


def _as_frames(video: np.ndarray) -> torch.Tensor:
    """(F, H, W, C) uint8 or [0, 1] float -> (F, C, H, W) float64 in [0, 1]."""
    array = np.asarray(video)
    if array.ndim != 4:
        raise ValueError(f"expected frames shaped (F, H, W, C), got {array.shape}")
    tensor = torch.from_numpy(array.astype(np.float64))
    if array.dtype == np.uint8:
        tensor = tensor / 255.0
    return tensor.permute(0, 3, 1, 2).contiguous()


def fidelity(video: np.ndarray, reference: np.ndarray) -> Fidelity:
    """Per-frame PSNR and SSIM of `video` against `reference`, averaged over frames."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    preds, target = _as_frames(video), _as_frames(reference)
    if preds.shape != target.shape:
        raise ValueError(f"videos differ in shape: {tuple(video.shape)} vs {tuple(reference.shape)}")
    psnr = peak_signal_noise_ratio(preds, target, data_range=1.0, dim=(1, 2, 3), reduction="none")
    # SSIM's 11x11 Gaussian window needs frames of at least 11 pixels; smaller frames use a smaller window.
    kernel = min(11, min(preds.shape[-2:]) // 2 * 2 - 1)
    # SSIM in float64, although CPU convolutions in float64 are ~20x slower (about 7 s for 17 frames of 128x128
    # on one thread): in float32 the local variances (E[x^2] - E[x]^2) cancel badly on flat light backgrounds,
    # and SSIM read up to 2e-3 low there (identical rendered videos: 0.998).
    ssim = structural_similarity_index_measure(preds, target, data_range=1.0, kernel_size=kernel,
                                               sigma=1.5 * kernel / 11, reduction="none")
    return Fidelity(psnr=float(psnr.mean()), ssim=float(ssim.mean()))

