"""Foreground masks on the video-token grid (frames, height, width) after VAE and patching.

Sources (pluggable, all weight-free):
- `video_motion_mask`: the moving subjects of the decoded video (the pipeline's output): the change of small
  cells of pixels between frames decides which colour clusters are foreground (the profiler's default);
- `motion_mask`: the same on the predicted clean latent, at token resolution, where no decoded video is at hand;
- `pca_mask`: 2-means clustering of a 3-component PCA of the latent (the paper's PCA image, with
  clustering instead of SAM2, which needs downloaded weights);
- `pixel_mask_to_tokens`: ground-truth or user-supplied pixel masks (F, H, W), e.g. from our synthetic data;
- `load_mask_file`: a user's .npy file, either pixel-level (F, H, W) or token-level.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy.cluster.vq import kmeans2

from ..errors import UserInputError


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best separates `values` into two classes (Otsu's method)."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centers) / np.maximum(weight_low, 1)
    mean_high = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # Cuts that separate equally well (e.g. every cut between the two values of two-valued data): their middle.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(centers[best].mean())


def _pool_patches(values: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """(F, H, W) -> (F, H/ph, W/pw) by averaging each patch."""
    f, h, w = values.shape
    ph, pw = patch
    return values[:, : h - h % ph, : w - w % pw].reshape(f, h // ph, ph, w // pw, pw).mean(axis=(2, 4))


MOTION_CLUSTERS = 2  # k of motion_mask's appearance clusters (chosen on training videos, docs/profiling.md)
MOTION_MAX_CLUSTERS = 4  # the largest k motion_mask tries when a split leaves the moving side a majority


def token_motion(latents: np.ndarray, patch: tuple[int, int] = (2, 2)) -> np.ndarray:
    """latents (C, F, H, W) -> (F, H/ph, W/pw): how much each token's latent changes over time.

    The change of a latent frame is the RMS over channels of its difference to the previous and the next
    frame (their mean). A causal video VAE codes latent frame 0 from one video frame and every later one
    from four, so the change from frame 0 to 1 is global, not motion: with 3 or more latent frames, frame 0
    is left out and takes frame 1's change.
    """
    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape[1] < 2:
        raise UserInputError("motion masks need at least 2 latent frames (5 video frames); use --mask_source pca")
    first = 1 if latents.shape[1] >= 3 else 0
    steps = np.sqrt((np.diff(latents[:, first:], axis=1) ** 2).mean(axis=0))  # (F - first - 1, H, W)
    change = np.concatenate([steps[:1], (steps[:-1] + steps[1:]) / 2, steps[-1:]], axis=0)
    change = np.concatenate([change[:1]] * first + [change], axis=0)
    return _pool_patches(change, patch)


def motion_mask(latents: np.ndarray, patch: tuple[int, int] = (2, 2), clusters: int = MOTION_CLUSTERS,
                max_clusters: int = MOTION_MAX_CLUSTERS) -> np.ndarray:
    """latents (C, F, H, W) -> bool token mask (F, H/ph, W/pw) of the moving subjects.

    Frame differences of a subject of even colour fire only at its leading and trailing edges (the aperture
    problem), so motion alone marks outlines. Here appearance groups the tokens and motion picks the groups:
    the tokens' latents, less each latent frame's median (a causal VAE's first frame, or a global drift, is
    offset as a whole), are clustered (k-means, `clusters` groups, fixed seeds), and Otsu's method splits
    the groups by their mean motion (weighted by group size); the moving side is foreground.

    Subjects are the smaller part of a frame: when the moving side covers more than half the tokens, the
    clusters have lumped a subject with part of the background (two background shades, or a generated
    background's blotches), so k grows by one up to `max_clusters`; if no k leaves a minority, the split
    with the fewest foreground tokens. A video without change gives an empty mask.
    """
    latents = np.asarray(latents, dtype=np.float32)
    motion = token_motion(latents, patch)
    if np.ptp(motion) == 0:
        return np.zeros(motion.shape, dtype=bool)
    pooled = np.stack([_pool_patches(channel, patch) for channel in latents])  # (C, F, h, w)
    pooled = pooled - np.median(pooled.reshape(*pooled.shape[:2], -1), axis=2)[:, :, None, None]
    return _moving_side(pooled.reshape(pooled.shape[0], -1).T, motion, clusters, max_clusters)


VIDEO_CELLS_PER_TOKEN = 8  # cells per token side of video_motion_mask (chosen on training videos, docs/profiling.md)


def video_motion_mask(frames: np.ndarray, token_grid: tuple[int, int, int], temporal_stride: int = 4,
                      cells_per_token: int = VIDEO_CELLS_PER_TOKEN, clusters: int = MOTION_CLUSTERS,
                      max_clusters: int = MOTION_MAX_CLUSTERS) -> np.ndarray:
    """frames (F, H, W, 3) of the decoded video -> bool token mask `token_grid` (frames, h, w) of its moving
    subjects.

    `motion_mask`'s method at a finer grain: a token of a video VAE with a 2x2 patch covers 16x16 pixels, and a
    subject a token or two across is lost among a token's latents, while its pixels keep its colour. Each frame
    is averaged into `cells_per_token` x `cells_per_token` cells per token; a cell's colour less its frame's
    median colour is its appearance, the RMS change of its colour to the previous and next frame its motion
    (the decoded video has no causal VAE's first-frame offset); appearance clusters on the moving side of
    Otsu's cut are foreground (k growing as in `motion_mask`); the cell mask goes onto the token grid as a pixel
    mask does (`pixel_mask_to_tokens`: foreground where half a token's cells are, over its video frames).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserInputError(f"video motion masks need frames (F, H, W, 3), got shape {frames.shape}")
    if frames.shape[0] < 2:
        raise UserInputError("video motion masks need at least 2 video frames; use --mask_source pca")
    needed = 1 + temporal_stride * (token_grid[0] - 1)
    if frames.shape[0] < needed:  # a pipeline that drops leading frames from its output (HunyuanVideo image-to-video
        # with latent_concat drops 4, its conditioning image's): they take its first frame, still, so the tokens
        # the video lacks are marked where its first frame shows the subject
        frames = np.concatenate([np.repeat(frames[:1], needed - frames.shape[0], axis=0), frames])
    cells = _pool_cells(frames, (token_grid[1] * cells_per_token, token_grid[2] * cells_per_token))
    change = np.sqrt((np.diff(cells, axis=0) ** 2).mean(axis=-1))  # (F - 1, hc, wc)
    motion = np.concatenate([change[:1], (change[:-1] + change[1:]) / 2, change[-1:]], axis=0)
    if np.ptp(motion) == 0:
        return np.zeros(token_grid, dtype=bool)
    appearance = cells - np.median(cells.reshape(cells.shape[0], -1, 3), axis=1)[:, None, None, :]
    found = _moving_side(appearance.reshape(-1, 3), motion, clusters, max_clusters)
    return pixel_mask_to_tokens(found, token_grid, temporal_stride)


def _pool_cells(frames: np.ndarray, cells: tuple[int, int]) -> np.ndarray:
    """(F, H, W, 3) -> (F, hc, wc, 3) float32 cell means (`_cell_means`); values in 0-1 (uint8 frames are scaled)."""
    _, height, width, _ = frames.shape
    return _cell_means(frames, (min(cells[0], height), min(cells[1], width)), dtype=np.float32,
                       scale=255.0 if frames.dtype == np.uint8 else 1.0)


def _cell_means(frames: np.ndarray, cells: tuple[int, int], dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    """(F, H, W) or (F, H, W, C) -> (F, hc, wc[, C]) in `dtype`: each pixel averaged (in float64, then divided by
    `scale`) into the cell it lies in, also when the sizes are not multiples (a mask at a source video's
    resolution); one frame at a time (a 720p video in float is gigabytes)."""
    height, width = frames.shape[1:3]
    hc, wc = cells
    rows, cols = np.arange(height) * hc // height, np.arange(width) * wc // width
    cell = (rows[:, None] * wc + cols[None, :]).ravel()
    counts = np.bincount(cell, minlength=hc * wc)
    channels = frames.shape[3:]
    means = np.empty((frames.shape[0], hc * wc, int(np.prod(channels))), dtype=dtype)
    for index, frame in enumerate(frames):
        planes = frame.reshape(height * width, -1)
        for channel in range(planes.shape[1]):
            means[index, :, channel] = np.bincount(cell, weights=planes[:, channel].astype(np.float64),
                                                   minlength=hc * wc) / counts / scale
    return means.reshape(frames.shape[0], hc, wc, *channels)


def _moving_side(features: np.ndarray, motion: np.ndarray, clusters: int, max_clusters: int) -> np.ndarray:
    """Mask (motion's shape) of the appearance clusters of `features` (one row per entry of `motion`) on the
    moving side, k from `clusters`, growing to `max_clusters` while the moving side is a majority; if no k
    leaves a minority, the split with the fewest foreground entries."""
    best = None
    for k in range(clusters, max(clusters, max_clusters) + 1):
        found = _moving_clusters(features, motion, min(k, motion.size))
        if best is None or found.sum() < best.sum():
            best = found
        if found.mean() <= 0.5:
            break
    return best


def _moving_clusters(features: np.ndarray, motion: np.ndarray, k: int) -> np.ndarray:
    """Token mask of the k-means clusters of `features` (one row per token) on the moving side of Otsu's cut
    of the clusters' mean `motion`."""
    labels = kmeans_labels(features, k)
    flat = motion.ravel()
    sizes = np.bincount(labels)
    means = np.array([flat[labels == j].mean() if sizes[j] else 0.0 for j in range(len(sizes))])
    moving = np.flatnonzero(means > otsu_threshold(np.repeat(means, sizes)))  # (no token has an empty cluster's label)
    return np.isin(labels, moving).reshape(motion.shape)


KMEANS_MAX_FIT_ROWS = 100_000  # k-means fits on a seeded sample of this many rows at most (a 720p video's cells)


def kmeans_labels(features: np.ndarray, k: int, restarts: int = 10, iterations: int = 30,
                  max_fit_rows: int = KMEANS_MAX_FIT_ROWS) -> np.ndarray:
    """(N, D) -> cluster label per row: scipy's k-means from k-means++ starts (seeds 0 .. restarts - 1), the
    run with the lowest within-cluster sum of squares (a single start varies a lot on a few hundred tokens).
    More than `max_fit_rows` rows: the centres are fitted on a seeded sample of them, every row takes its
    nearest centre."""
    features = np.asarray(features, dtype=np.float64)
    sample = features
    if len(features) > max_fit_rows:
        sample = features[np.random.default_rng(0).choice(len(features), max_fit_rows, replace=False)]
    best_error, best_centers = np.inf, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "One of the clusters is empty": fewer distinct rows than k is fine
        for seed in range(restarts):
            centers, labels = kmeans2(sample, k, iter=iterations, minit="++", seed=seed, missing="warn")
            error = float(((sample - centers[labels]) ** 2).sum())
            if error < best_error:
                best_error, best_centers, best_labels = error, centers, labels
    if sample is features:
        return best_labels
    chunks = np.array_split(features, -(-len(features) // 1_000_000))  # (bounded memory for the distances)
    return np.concatenate([_nearest(chunk, best_centers) for chunk in chunks])


def _nearest(rows: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return np.argmin(((rows[:, None, :] - centers[None]) ** 2).sum(axis=-1), axis=1)


def pca_mask(latents: np.ndarray, patch: tuple[int, int] = (2, 2)) -> np.ndarray:
    """latents (C, F, H, W) -> bool token mask: the smaller of two k-means clusters of the 3-component PCA
    image (`kmeans_labels`, as the motion mask clusters)."""
    latents = np.asarray(latents, dtype=np.float32)
    c = latents.shape[0]
    pooled = np.stack([_pool_patches(channel, patch) for channel in latents])  # (C, F, h, w)
    features = pooled.reshape(c, -1).T
    features = features - features.mean(axis=0)
    _, _, components = np.linalg.svd(features, full_matrices=False)
    labels = kmeans_labels(features @ components[:3].T, min(2, len(features)))
    foreground = int(np.argmin(np.bincount(labels, minlength=2)))
    return (labels == foreground).reshape(pooled.shape[1:])


def pixel_mask_to_tokens(mask: np.ndarray, token_grid: tuple[int, int, int], temporal_stride: int = 4,
                         min_coverage: float = 0.5) -> np.ndarray:
    """Pixel mask (F, H, W) -> token mask: a token is foreground when >= min_coverage of its pixels are.

    Token frame 0 is video frame 0; token frame k >= 1 covers video frames s(k-1)+1 .. sk for a temporal stride
    s (video frames per token frame: a causal VAE's 4 for Wan, HunyuanVideo and CogVideoX, times the
    transformer's temporal patch). A video 0 < e < s frames longer than that is a temporal patch over latents the
    pipeline did not pad (CogVideoX 1.5 with an even latent count): token frame 0 then covers frames 0 .. e, and
    every later one s frames from there.
    """
    mask = np.asarray(mask, dtype=np.float32)
    frames, height, width = token_grid
    extra = mask.shape[0] - (1 + temporal_stride * (frames - 1))
    first = extra + 1 if 0 < extra < temporal_stride else 1
    groups = [mask[:first]] + [mask[first + temporal_stride * (k - 1): first + temporal_stride * k]
                               for k in range(1, frames)]
    if any(g.shape[0] == 0 for g in groups):
        needed = 2 + temporal_stride * (frames - 2) if frames > 1 else 1
        raise UserInputError(f"mask has {mask.shape[0]} frames; {frames} token frames need at least {needed} video "
                             f"frames (frame 0, then {temporal_stride} per token frame), or give a token-level mask "
                             f"of shape {tuple(token_grid)}")
    per_frame = np.stack([g.mean(axis=0) for g in groups])  # (frames, H, W)
    pixels_h, pixels_w = mask.shape[1:]
    if pixels_h < height or pixels_w < width:
        raise UserInputError(f"mask of {pixels_h}x{pixels_w} pixels is smaller than the token grid")
    return _cell_means(per_frame, (height, width)) >= min_coverage  # (coverage: the mean over a token's pixels)


def load_mask_file(path: str | Path, token_grid: tuple[int, int, int], temporal_stride: int = 4) -> np.ndarray:
    """A user's .npy mask, pixel-level (F, H, W; `temporal_stride` video frames per token frame after the
    first) or already token-level (frames, h, w)."""
    path = Path(path)
    try:
        mask = np.load(path)
    except (OSError, ValueError) as err:
        raise UserInputError(f"mask file {path}: cannot read it as a .npy array ({err})") from None
    if mask.ndim != 3:
        raise UserInputError(f"mask file {path}: expected a 3-D array (frames, height, width), got shape {mask.shape}")
    if tuple(mask.shape) == tuple(token_grid):
        return mask.astype(bool)
    return pixel_mask_to_tokens(mask, token_grid, temporal_stride)
