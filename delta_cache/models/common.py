"""What every family's sampling module shares: the result of a timed generation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Generation:
    frames: np.ndarray  # (F, H, W, C) float in [0, 1]
    denoise_seconds: float  # the denoising loop alone: no text encoding, no decoding


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
