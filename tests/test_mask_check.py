"""scripts/check_masks.py: mask sources scored on rendered videos encoded by a checkpoint's own VAE."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from delta_cache.errors import UserInputError
from delta_cache.profiling.mask_check import (EncodedVideo, generate_videos, markdown_table, mask_sources,
                                              score_sources)
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent


def test_the_committed_wan_vae_lets_the_default_motion_masks_find_rendered_subjects(capsys):
    scores = load_script(REPO / "scripts" / "check_masks.py").main(
        ["--family", "wan", "--num_videos", "4", "--clusters", "2", "4", "--cells", "1"])
    printed = capsys.readouterr().out
    assert "| video motion (default) |" in printed and "| latent motion, k = 4 |" in printed and "| pca |" in printed
    assert list(scores) == ["video motion (default)", "video motion, 1 cells per token side", "latent motion",
                            "latent motion, k = 2", "latent motion, k = 4", "pca"]
    assert all(len(v) == 4 and all(0.0 <= x <= 1.0 for x in v) for v in scores.values())
    # Lenient: 0.61 on these 4 training videos; frame differences thresholded per token (the mask before
    # 2026-12-06) gave 0.28: they mark a flat subject's edges and all of the VAE's first latent frame.
    assert np.mean(scores["latent motion"]) >= 0.45
    # The decoded video's cells resolve what a token's latents blur: 0.80 against 0.56 on 16 training videos.
    assert np.mean(scores["video motion (default)"]) >= np.mean(scores["latent motion"]) + 0.1


def test_generated_videos_are_the_models_own_seeded_generations_with_their_drawn_foreground():
    import torch

    from delta_cache.models.runner import load_runner
    from delta_cache.synthetic import make_video

    runner = load_runner("wan", REPO / "checkpoints" / "tiny-wan2.1-t2v", width=128, height=128, num_frames=17,
                         num_steps=3, device=torch.device("cpu"))
    with torch.no_grad():
        videos = generate_videos(runner, "eval", 2)
        again, _ = runner.generate(make_video(1, "eval").prompt, 1)  # video i: prompt i, seed i
    assert [v.prompt for v in videos] == [make_video(i, "eval").prompt for i in range(2)]
    assert videos[1].latents.shape == (16, 5, 16, 16) and np.array_equal(videos[1].latents, again[0].numpy())
    assert all(v.truth.shape == runner.token_grid and v.truth.dtype == bool for v in videos)
    assert not np.array_equal(videos[0].latents, videos[1].latents)
    with pytest.raises(UserInputError, match="--num_videos"):
        generate_videos(runner, "eval", 0)


def test_videos_without_a_subject_on_the_token_grid_are_left_out():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    truth = np.zeros((3, 4, 4), dtype=bool)
    frames = rng.uniform(size=(9, 32, 32, 3)).astype(np.float32)
    found = EncodedVideo("p", latents, frames, truth)
    truth_2 = truth.copy()
    truth_2[:, 1, 1] = True
    scores = score_sources([found, EncodedVideo("q", latents, frames, truth_2)], mask_sources([2], [2]), (2, 2))
    assert [len(v) for v in scores.values()] == [1, 1, 1, 1, 1]
    assert "| n/a | n/a | 0 |" in markdown_table({"empty": []})
    with pytest.raises(UserInputError, match="--clusters"):
        mask_sources([])


@pytest.mark.parametrize("flags, message", [
    (["--clusters", "0"], "--clusters"),
    (["--clusters", "2", "1"], "--clusters: give one or more cluster counts >= 2"),
    (["--cells", "0"], "--cells"),
    (["--num_videos", "-1"], "--num_videos"),
    (["--videos", "both"], "--videos"),
    (["--ckpt_dir", "/nonexistent/ckpt"], "no such folder"),
])
def test_bad_flags_get_one_line_and_exit_2(flags, message):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "check_masks.py"), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
