"""delta_cache.metrics: per-frame PSNR and SSIM against values worked out by hand or in full precision."""

import math

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from delta_cache.metrics import fidelity


def test_psnr_of_a_known_error_and_identical_videos():
    reference = np.full((3, 16, 16, 3), 0.5)
    assert math.isclose(fidelity(reference + 0.1, reference).psnr, 20.0, abs_tol=1e-4)  # 10 log10(1 / 0.01)
    same = fidelity(reference, reference)
    assert same.psnr == math.inf and same.ssim == 1.0
    frames = (np.random.default_rng(0).random((2, 16, 16, 3)) * 255).astype(np.uint8)
    assert fidelity(frames, frames).ssim == 1.0


def test_ssim_matches_the_float64_computation():
    rng = np.random.default_rng(1)
    reference = rng.random((4, 40, 48, 3))
    video = np.clip(reference + 0.05 * rng.standard_normal(reference.shape), 0, 1)
    as_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    exact = structural_similarity_index_measure(as_tensor(video), as_tensor(reference), data_range=1.0)
    ssim = fidelity(video, reference).ssim
    assert 0.5 < ssim < 0.99 and abs(ssim - float(exact)) < 1e-5
