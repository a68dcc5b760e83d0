"""scripts/score_videos.py and the paper-protocol metrics (delta_cache/metrics.py): PSNR on decoded uint8
frames, the 11x11 uniform-window SSIM, the per-video FID and VBench*."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from delta_cache.errors import UserInputError
from delta_cache.metrics import make_video_fid, paper_ssim
from delta_cache.video import read_video, save_video
from script_loader import load_script

score_videos = load_script(Path(__file__).resolve().parent.parent / "scripts" / "score_videos.py")


def _uniform_ssim(video, reference, window=11):
    """SSIM with a uniform window written from its definition (scipy filters; sample covariances over the
    window's n pixels), averaged over the pixels the window fits in."""
    a, b = video.astype(np.float64) / 255, reference.astype(np.float64) / 255
    c1, c2, pad = 0.01 ** 2, 0.03 ** 2, window // 2
    sample = window * window / (window * window - 1)
    scores = []
    for frame in range(a.shape[0]):
        for channel in range(a.shape[3]):
            x, y = a[frame, :, :, channel], b[frame, :, :, channel]
            mx, my = uniform_filter(x, window), uniform_filter(y, window)
            sxx = (uniform_filter(x * x, window) - mx * mx) * sample
            syy = (uniform_filter(y * y, window) - my * my) * sample
            sxy = (uniform_filter(x * y, window) - mx * my) * sample
            ssim = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
            scores.append(ssim[pad:-pad, pad:-pad].mean())
    return float(np.mean(scores))


def _psnr(video, reference):
    mse = ((video.astype(np.float64) - reference.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0 ** 2 / mse)))


def _clip(rng, frames=5):
    """A textured clip: smooth colour gradients plus a moving square (mp4 keeps it roughly intact)."""
    y, x = np.mgrid[0:48, 0:64] / 64.0
    video = np.zeros((frames, 48, 64, 3), np.float32)
    for i in range(frames):
        video[i] = np.stack([x, y, 0.5 + 0.3 * np.sin(6 * x + i)], axis=-1)
        video[i, 10:26, 8 + 5 * i:24 + 5 * i] = rng.random(3)
    return video


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    rng = np.random.default_rng(0)
    for name in ("uncached", "same", "noisy"):
        (root / name).mkdir()
    for index in range(2):
        clip = _clip(rng)
        save_video(clip, root / "uncached" / f"v{index}.mp4", fps=16)
        save_video(clip, root / "same" / f"v{index}.mp4", fps=16)
        noisy = np.clip(clip + rng.normal(0, 0.08, clip.shape), 0, 1).astype(np.float32)
        save_video(noisy, root / "noisy" / f"v{index}.mp4", fps=16)
    return root


def _vbench_file(path, scores):
    """A result file as VBench writes it: dimension -> [overall score, per-video details]."""
    path.write_text(json.dumps({dim: [score, [{"video_path": "v0.mp4", "video_results": score}]]
                                for dim, score in scores.items()}))
    return path


def test_scores_as_the_paper_computes_them(folders, tmp_path, capsys):
    dims = score_videos.VBENCH_DIMENSIONS
    reference_scores = dict(zip(dims, (0.95, 0.96, 0.98, 0.4, 0.6, 0.65)))
    noisy_scores = dict(zip(dims, (0.94, 0.95, 0.97, 0.4, 0.55, 0.6)))
    score_videos.main(["--reference", str(folders / "uncached"), "--method", f"same={folders / 'same'}",
                       "--method", f"noisy={folders / 'noisy'}",
                       "--vbench", f"uncached={_vbench_file(tmp_path / 'u.json', reference_scores)}",
                       "--vbench", f"noisy={_vbench_file(tmp_path / 'n.json', noisy_scores)}", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "scores.json").read_text())
    for row in results["videos"]["noisy"]:
        video = read_video(folders / "noisy" / row["video"])
        reference = read_video(folders / "uncached" / row["video"])
        assert row["psnr"] == pytest.approx(_psnr(video, reference), rel=1e-6)
        assert row["ssim"] == pytest.approx(_uniform_ssim(video, reference), abs=1e-6)
        assert row["ssim"] < 0.95 and row["lpips"] is None  # (no torchvision or AlexNet weights here)
    assert all(row["psnr"] == "inf" and row["ssim"] == pytest.approx(1.0) for row in results["videos"]["same"])
    assert results["vbench_star"] == {"uncached": pytest.approx(np.mean(list(reference_scores.values()))),
                                      "noisy": pytest.approx(np.mean(list(noisy_scores.values())))}
    table = capsys.readouterr().out
    assert "| uncached | 0.7567 | - | - | - | - |" in table
    assert "| same | n/a | " in table and "| inf | 1.0000 |" in table
    assert "PSNR of same: 2 of 2 videos identical to the reference (infinite), left out of its mean." in table
    assert "PSNR of noisy" not in table
    noisy_psnr = np.mean([row["psnr"] for row in results["videos"]["noisy"]])
    assert f"| noisy | 0.7350 | n/a | {noisy_psnr:.2f} |" in table


def test_per_video_fid_with_a_feature_extractor():
    # The Frechet distance of two frame sets through torchmetrics, here with a small feature extractor (the
    # paper's Inception needs torch-fidelity and weights from the internet): 0 for the same frames, more for
    # frames that differ.
    class ColourStatistics(torch.nn.Module):
        num_features = 6

        def forward(self, images):  # [0, 1] (N, 3, H, W) -> per-channel means and standard deviations
            images = images.double()
            return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)

    fid, note = make_video_fid("cpu", feature=ColourStatistics())
    assert note is None
    rng = np.random.default_rng(1)
    reference = (rng.random((12, 16, 16, 3)) * 255).astype(np.uint8)
    darker = (reference * 0.7).astype(np.uint8)
    assert abs(fid(reference, reference)) < 1e-6
    assert fid(darker, reference) > 1e-3
    # without torch-fidelity (not a dependency), the paper's Inception FID is n/a with the reason
    missing, reason = make_video_fid("cpu")
    assert missing is None and ("torch-fidelity" in reason or "not on disk" in reason)


def test_paper_ssim_is_the_uniform_window_variant():
    rng = np.random.default_rng(2)
    reference = (rng.random((2, 40, 48, 3)) * 255).astype(np.uint8)
    video = np.clip(reference.astype(int) + rng.integers(-40, 40, reference.shape), 0, 255).astype(np.uint8)
    assert paper_ssim(video, reference) == pytest.approx(_uniform_ssim(video, reference), abs=1e-6)
    assert paper_ssim(reference, reference) == pytest.approx(1.0)


def test_bad_input_gives_one_line(folders, tmp_path):
    bad_vbench = tmp_path / "bad.json"
    bad_vbench.write_text(json.dumps({"subject_consistency": [0.9, []]}))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "v0.mp4").write_bytes((folders / "same" / "v0.mp4").read_bytes())
    (tmp_path / "short").mkdir()
    for name in ("v0.mp4", "v1.mp4"):
        save_video(np.zeros((3, 48, 64, 3), np.float32), tmp_path / "short" / name, fps=16)
    reference = ["--reference", str(folders / "uncached")]
    cases = [
        (reference + ["--method", "same"], "--method same: expected NAME=PATH"),
        (reference + ["--method", f"partial={tmp_path / 'partial'}"], "no v1.mp4"),
        (reference + ["--method", f"same={folders / 'same'}", "--vbench", f"other={bad_vbench}"],
         "--vbench other: not 'uncached' or a --method name"),
        (reference + ["--method", f"same={folders / 'same'}", "--vbench", f"same={bad_vbench}"],
         "no score for background_consistency"),
        (reference + ["--method", f"short={tmp_path / 'short'}"], "3 frames of 64x48, the reference 5 of 64x48"),
        (["--reference", str(tmp_path / "nowhere"), "--method", f"same={folders / 'same'}"], "no such folder"),
    ]
    for argv, message in cases:
        with pytest.raises(UserInputError, match=message):
            score_videos.main(argv)
