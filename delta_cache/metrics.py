"""Fidelity of a cached video to the uncached one (torchmetrics): per-frame PSNR and SSIM, the paper's SSIM
variant, and the optional LPIPS and per-video FID, whose backbone weights are used only when already on disk.

Frames are float arrays in [0, 1], shaped (F, H, W, C) as the pipelines return them, or uint8 arrays as
read back from an mp4. Each metric is computed per frame and averaged over frames; identical videos give
PSNR = inf, and a single frame identical to its reference counts as PSNR_CAP_DB (else one such frame would
make a whole video "identical").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


PSNR_CAP_DB = 100.0  # a frame identical to its reference, in a video that is not


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


def _frame_pair(video: np.ndarray, reference: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both videos as `_as_frames` gives them; they must have the same shape."""
    preds, target = _as_frames(video), _as_frames(reference)
    if preds.shape != target.shape:
        raise ValueError(f"videos differ in shape: {tuple(video.shape)} vs {tuple(reference.shape)}")
    return preds, target


def fidelity(video: np.ndarray, reference: np.ndarray) -> Fidelity:
    """Per-frame PSNR and SSIM of `video` against `reference`, averaged over frames. Frame by frame: SSIM in
    float64 takes about 5 KB per pixel of a frame at once (about 5 GB for a 720p frame; a whole 129-frame video
    at once would need over 600 GB)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    video, reference = np.asarray(video), np.asarray(reference)
    if video.ndim != 4 or reference.ndim != 4:
        raise ValueError(f"expected frames shaped (F, H, W, C), got {video.shape} and {reference.shape}")
    if video.shape != reference.shape:
        raise ValueError(f"videos differ in shape: {tuple(video.shape)} vs {tuple(reference.shape)}")
    # SSIM's 11x11 Gaussian window needs frames of at least 11 pixels; smaller frames use a smaller window.
    kernel = min(11, min(video.shape[1:3]) // 2 * 2 - 1)
    psnr, ssim = [], []
    for index in range(video.shape[0]):
        preds, target = _frame_pair(video[index:index + 1], reference[index:index + 1])
        psnr.append(float(peak_signal_noise_ratio(preds, target, data_range=1.0, dim=(1, 2, 3), reduction="none")))
        # SSIM in float64, although CPU convolutions in float64 are ~20x slower (about 7 s for 17 frames of
        # 128x128 on one thread): in float32 the local variances (E[x^2] - E[x]^2) cancel badly on flat light
        # backgrounds, and SSIM read up to 2e-3 low there (identical rendered videos: 0.998).
        ssim.append(float(structural_similarity_index_measure(preds, target, data_range=1.0, kernel_size=kernel,
                                                              sigma=1.5 * kernel / 11)))
    psnr = np.array(psnr)
    mean_psnr = math.inf if np.isinf(psnr).all() else float(np.minimum(psnr, PSNR_CAP_DB).mean())
    return Fidelity(psnr=mean_psnr, ssim=float(np.mean(ssim)))


def paper_ssim(video: np.ndarray, reference: np.ndarray) -> float:
    """SSIM as the ProfilingDiT paper reports it: an 11x11 uniform window (`fidelity` uses the usual Gaussian
    one), scikit-image's definition (sample covariances, the mean over the pixels the window fits in), per
    frame over the RGB channels, averaged over frames."""
    from skimage.metrics import structural_similarity

    preds, target = _frame_pair(video, reference)
    window = min(11, min(preds.shape[-2:]) // 2 * 2 - 1)
    scores = [structural_similarity(p.numpy(), t.numpy(), win_size=window, channel_axis=0, data_range=1.0)
              for p, t in zip(preds, target)]
    return float(np.mean(scores))


VideoMetric = Callable[[np.ndarray, np.ndarray], float]  # (video, reference) -> value


def mean_of_present(values) -> float | None:
    """The mean of the values that are not None (an optional metric's missing ones); None if there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def format_metric(value, spec: str) -> str:
    """A table cell: "n/a" for a missing value, "inf" for an infinite one (identical videos' PSNR)."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _hub_file(url: str) -> Path:
    """Where torch.hub keeps the download of `url`."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def make_lpips(device) -> tuple[VideoMetric | None, str | None]:
    """Per-frame LPIPS (AlexNet, as the paper) averaged over frames, if its backbone weights are already on disk
    (never downloads); else (None, reason)."""
    try:
        from torchvision import models  # torchmetrics builds the backbone with torchvision
    except ImportError:
        return None, "torchvision not installed"
    local = _hub_file(models.AlexNet_Weights.DEFAULT.url)
    if not local.is_file():
        return None, f"backbone weights not on disk ({local})"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()
    except Exception as err:  # an optional metric must never stop a benchmark
        return None, f"cannot build LPIPS ({type(err).__name__}: {err})"

    def lpips(video, reference) -> float:
        a, b = _as_frames(video).float().to(device), _as_frames(reference).float().to(device)
        with torch.no_grad():
            return float(torch.stack([metric(a[i:i + 1], b[i:i + 1]) for i in range(len(a))]).mean())

    return lpips, None


def make_video_fid(device, weights_path: str | Path | None = None,
                   feature: torch.nn.Module | None = None) -> tuple[VideoMetric | None, str | None]:
    """The paper's per-video FID: the Frechet distance between the Inception pool3 features of a video's frames
    and those of its reference's frames (one video against one video: not comparable with a standard FID).

    Needs torch-fidelity and its Inception weights on disk (`weights_path`, or torch.hub's download folder;
    never downloads); else (None, reason). `feature`: another feature extractor (an nn.Module mapping
    [0, 1] images to feature vectors) instead of Inception."""
    if feature is None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
        except ImportError:
            return None, "torch-fidelity not installed"
        weights_path = Path(weights_path) if weights_path is not None else _hub_file(URL_INCEPTION_V3)
        if not weights_path.is_file():
            return None, f"Inception weights not on disk ({weights_path})"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(
            feature=feature if feature is not None else 2048, normalize=True,
            **({} if feature is not None else {"feature_extractor_weights_path": str(weights_path)})).to(device)
    except Exception as err:  # an optional metric must never stop a benchmark
        return None, f"cannot build FID ({type(err).__name__}: {err})"

    def video_fid(video, reference) -> float:
        metric.reset()
        with torch.no_grad():
            metric.update(_as_frames(reference).float().to(device), real=True)
            metric.update(_as_frames(video).float().to(device), real=False)
            return float(metric.compute())

    return video_fid, None
