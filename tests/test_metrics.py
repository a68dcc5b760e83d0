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
    # one identical frame does not make the video identical: it counts as PSNR_CAP_DB (100), the others 20
    one_same = reference + 0.1
    one_same[0] = reference[0]
    assert math.isclose(fidelity(one_same, reference).psnr, (100.0 + 20.0 + 20.0) / 3, abs_tol=1e-4)


def test_ssim_is_exact_on_flat_light_backgrounds():
    # Rendered synthetic videos: flat white or gray backgrounds, where float32 SSIM read identical videos as
    # 0.998 and a slightly noisy copy 6e-4 low (the local variances cancel).
    from delta_cache.synthetic import make_video

    as_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    for index in (0, 2):  # white backgrounds
        frames = make_video(index, "eval").frames[:5, :48, :48]
        assert fidelity(frames, frames).ssim == 1.0
        reference = frames / 255.0
        noisy = np.clip(reference + 0.01 * np.random.default_rng(index).standard_normal(reference.shape), 0, 1)
        exact = structural_similarity_index_measure(as_tensor(noisy), as_tensor(reference), data_range=1.0)
        assert abs(fidelity(noisy, reference).ssim - float(exact)) < 1e-9


def test_ssim_matches_the_float64_computation():
    rng = np.random.default_rng(1)
    reference = rng.random((4, 40, 48, 3))
    video = np.clip(reference + 0.05 * rng.standard_normal(reference.shape), 0, 1)
    as_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    exact = structural_similarity_index_measure(as_tensor(video), as_tensor(reference), data_range=1.0)
    ssim = fidelity(video, reference).ssim
    assert 0.5 < ssim < 0.99 and abs(ssim - float(exact)) < 1e-5
