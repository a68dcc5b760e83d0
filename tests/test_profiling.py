"""The profiling tool: attention saliency, masks, foreground ratio, schedule derivation, CLI end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import delta_cache as dc
import tiny_wan
from delta_cache.models.wan.pipeline import make_scheduler, token_grid
from delta_cache.profiling import masks
from delta_cache.profiling.evidence_results import mask_iou
from delta_cache.profiling.derive import (
    DerivationParams,
    derive_for_target,
    derive_schedule,
    curve_thresholds,
    refresh_steps_eq15,
    refresh_steps_from_curve,
    warmup_from_curve,
)
from delta_cache.profiling.probe import ProbeRecord, ProbeSettings, ProfileProbe
from delta_cache.profiling.profile import Profile, PromptProfile
from delta_cache.profiling.runner import ProfileRequest, run_profile

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("max_logits, leading", [(2**27, 0), (24 * 30, 0), (2**27, 5)])
def test_received_attention_equals_sdpa_probabilities(monkeypatch, max_logits, leading):
    # all heads at once or one head at a time; `leading` tokens before the video's (VACE's reference frames)
    monkeypatch.setattr("delta_cache.profiling.probe.MAX_LOGITS", max_logits)
    # SDPA with V = identity returns the attention probabilities: an independent oracle.
    torch.manual_seed(0)
    length = leading + 30  # 24 video tokens, 6 text tokens last
    q, k = torch.randn(1, 3, length - 6, 8), torch.randn(1, 3, length, 8)
    mask = torch.ones(1, 1, 1, length, dtype=torch.bool)
    mask[..., -2:] = False  # padded text tokens
    settings = ProbeSettings(token_grid=(2, 3, 4), max_queries=24, leading_tokens=leading)
    probe = ProfileProbe(torch.nn.Module(), [], settings)  # every video token is a query
    saliency = probe._received_attention(q, k, mask, None)
    probabilities = F.scaled_dot_product_attention(q, k, torch.eye(length).expand(1, 3, length, length),
                                                   attn_mask=mask)
    video = slice(leading, leading + 24)  # rows: video queries only; columns: attention the video receives
    torch.testing.assert_close(saliency, probabilities[:, :, video].mean(dim=(0, 1, 2))[video])


def test_otsu_and_masks():
    values = np.concatenate([np.full(90, 0.1), np.full(10, 0.9)])
    assert masks.otsu_threshold(values) == pytest.approx(0.5, abs=0.01)  # tied cuts: their middle, not the first
    pixels = np.zeros((9, 32, 32), dtype=bool)
    pixels[:, :16, :16] = True  # top-left quarter, all frames
    tokens = masks.pixel_mask_to_tokens(pixels, (3, 2, 2))
    assert tokens.tolist() == [[[True, False], [False, False]]] * 3
    # sizes that are not multiples of the grid (a mask at the source video's resolution): no shift, no lost edge
    right_half = np.zeros((1, 100, 100), dtype=bool)
    right_half[:, :, 50:] = True
    tokens = masks.pixel_mask_to_tokens(right_half, (1, 30, 30))
    assert tokens[..., 15:].all() and not tokens[..., :15].any()
    at_the_edge = np.zeros((1, 720, 1280), dtype=bool)
    at_the_edge[:, 300:400, -40:] = True  # the last 40 pixel columns: one and a half of 52 token columns
    assert masks.pixel_mask_to_tokens(at_the_edge, (1, 30, 52))[0, 13:16, -1].all()


def test_pixel_masks_onto_token_frames_of_a_temporal_patch_over_unpadded_latents():
    """CogVideoX 1.5 (4 frames a latent frame, 2 latent frames a token frame) at 85 frames: 22 latent frames, not
    padded, 11 token frames; token frame k >= 1 covers latent frames 2k, 2k+1, video frames 8k-3 .. 8k+4, and
    token frame 0 frames 0 .. 4. (Padded runs, e.g. 81 frames, give 1 + 8(T - 1) frames: the usual groups.)"""
    frames = np.zeros((85, 8, 8), dtype=bool)
    for k in range(1, 11):  # token frame k's subject: its own column, on exactly its 8 video frames
        frames[8 * k - 3: 8 * k + 5, :, k % 8] = True
    frames[0:5, :, 0] = True
    tokens = masks.pixel_mask_to_tokens(frames, (11, 1, 8), temporal_stride=8)
    assert [int(np.flatnonzero(t[0])[0]) if t.any() else None for t in tokens] == [0] + [k % 8 for k in range(1, 11)]
    assert all(t.sum() == 1 for t in tokens)
    # every frame of each group, exactly (a group one frame off would miss one: coverage below 1)
    exact = masks.pixel_mask_to_tokens(frames, (11, 1, 8), temporal_stride=8, min_coverage=1.0)
    assert np.array_equal(exact, tokens)
    padded = masks.pixel_mask_to_tokens(np.ones((81, 8, 8), dtype=bool), (11, 1, 8), temporal_stride=8)
    assert padded.all()


def _flat_square_moving_slowly(frames=5, size=32, side=8, first_frame_offset=0.8):
    """Latents (16, F, size, size): a square of even colour (4x4 tokens) moving right by a quarter of its width
    per latent frame over a static textured background, and its true token mask (patch 2x2)."""
    rng = np.random.default_rng(0)
    texture = rng.normal(0, 0.3, (16, 1, size, size))
    latents = np.repeat(texture, frames, axis=1) + rng.normal(0, 0.02, (16, frames, size, size))
    colour = rng.normal(0, 1, (16, 1, 1))
    truth = np.zeros((frames, size // 2, size // 2), dtype=bool)
    for f in range(frames):
        latents[:, f, 10:10 + side, 4 + 2 * f: 4 + 2 * f + side] = colour
        truth[f, 5:9, 2 + f: 6 + f] = True
    latents[:, 0] += first_frame_offset  # a causal VAE's first latent frame (one video frame) is offset as a whole
    return latents.astype(np.float32), truth


def test_motion_mask_finds_the_whole_moving_subject_not_its_edges():
    latents, truth = _flat_square_moving_slowly()
    found = masks.motion_mask(latents)
    assert found.shape == truth.shape
    # Frame differences alone fire on the square's two edges only, and on all of frame 0 (IoU 0.08 here).
    assert mask_iou(found, truth) >= 0.9
    assert found.sum(axis=(1, 2)).tolist() == truth.sum(axis=(1, 2)).tolist()
    assert np.array_equal(masks.motion_mask(latents), found)  # deterministic (k-means from seeded starts)


def _square_on_two_background_shades(frames=5, size=32, side=8):
    """Latents (16, F, size, size): a background of two flat shades (left 3/8 and right 5/8) and a square
    (4x4 tokens) moving right across the right shade, in a colour nearer that shade than the left one; and
    its true token mask (patch 2x2)."""
    rng = np.random.default_rng(0)
    right, offset = rng.normal(0, 1, (2, 16, 1, 1, 1))
    latents = np.broadcast_to(right, (16, frames, size, size)).copy()
    latents[:, :, :, : size * 3 // 8] = -2 * right
    latents += rng.normal(0, 0.05, latents.shape)
    truth = np.zeros((frames, size // 2, size // 2), dtype=bool)
    for f in range(frames):
        latents[:, f, 12:12 + side, 14 + 2 * f: 14 + 2 * f + side] = (right + 0.8 * offset)[:, 0]
        truth[f, 6:10, 7 + f: 11 + f] = True
    return latents.astype(np.float32), truth


def test_motion_mask_grows_k_when_the_moving_side_is_a_majority():
    latents, truth = _square_on_two_background_shades()
    # Two clusters put the square with the right shade: that whole side "moves" (62.5% of the tokens).
    lumped = masks.motion_mask(latents, clusters=2, max_clusters=2)
    assert lumped.mean() > 0.5 and mask_iou(lumped, truth) < 0.2
    found = masks.motion_mask(latents)  # k = 3 separates the square
    assert mask_iou(found, truth) >= 0.9


def test_motion_mask_of_a_still_video_is_empty_and_needs_two_latent_frames():
    still = np.repeat(np.random.default_rng(1).normal(size=(4, 1, 8, 8)), 3, axis=1).astype(np.float32)
    assert not masks.motion_mask(still).any()
    with pytest.raises(dc.UserInputError, match="at least 2 latent frames"):
        masks.motion_mask(still[:, :1])
    latents, truth = _flat_square_moving_slowly(frames=2, first_frame_offset=0.0)  # 5-frame videos: 2 latent frames
    assert mask_iou(masks.motion_mask(latents), truth) >= 0.5


def _small_square_video(frames=17, size=128, side=24, step=1):
    """uint8 frames (F, size, size, 3): a flat square about a token across (tokens of 16x16 pixels) moving right
    `step` pixels a frame (less than its width between frames: its inside does not change) over a still, textured
    background of two shades; and its pixel mask (F, size, size)."""
    rng = np.random.default_rng(0)
    background = np.where(np.arange(size)[None, :, None] < size // 3, [40.0, 90.0, 40.0], [150.0, 150.0, 170.0])
    background = np.broadcast_to(background, (size, size, 3)) + rng.normal(0, 6, (size, size, 3))
    video = np.repeat(background[None], frames, axis=0)
    mask = np.zeros((frames, size, size), dtype=bool)
    for f in range(frames):
        mask[f, 50:50 + side, 44 + step * f: 44 + step * f + side] = True
    video[mask] = [200.0, 60.0, 40.0]
    return np.clip(video + rng.normal(0, 2, video.shape), 0, 255).astype(np.uint8), mask


def test_video_motion_mask_finds_a_small_subject_whole_on_the_token_grid():
    frames, pixels = _small_square_video()
    grid = (5, 8, 8)
    truth = masks.pixel_mask_to_tokens(pixels, grid)
    assert truth.any()
    found = masks.video_motion_mask(frames, grid)
    assert found.shape == grid and found.dtype == bool
    assert mask_iou(found, truth) >= 0.9
    # One cell per token: a token the square half covers averages its colour with the background's (0.23 here).
    assert mask_iou(masks.video_motion_mask(frames, grid, cells_per_token=1), truth) < 0.4
    assert np.array_equal(masks.video_motion_mask(frames.astype(np.float32) / 255, grid), found)  # uint8 or 0-1
    assert np.array_equal(masks.video_motion_mask(frames, grid), found)  # deterministic (seeded k-means)
    # Frame differences alone mark the square's leading and trailing edges, a sliver of each token.
    change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=-1) > 30
    edges = masks.pixel_mask_to_tokens(np.concatenate([change[:1], change]), grid)
    assert mask_iou(edges, truth) < 0.2


def test_video_motion_mask_of_a_video_missing_its_leading_frames():
    """HunyuanVideo image-to-video (latent_concat) drops its first 4 decoded frames: the tokens still get a mask,
    the missing frames taken as the first one, still."""
    frames, pixels = _small_square_video()
    grid = (5, 8, 8)
    truth = masks.pixel_mask_to_tokens(pixels, grid)
    found = masks.video_motion_mask(frames[4:], grid)
    assert found.shape == grid and mask_iou(found[2:], truth[2:]) >= 0.9
    assert found[0].any() and found[1].any()


def test_video_motion_mask_of_a_still_video_is_empty_and_bad_frames_get_one_line():
    frames, _ = _small_square_video()
    assert not masks.video_motion_mask(np.repeat(frames[:1], 9, axis=0), (3, 8, 8)).any()
    with pytest.raises(dc.UserInputError, match="at least 2 video frames"):
        masks.video_motion_mask(frames[:1], (1, 8, 8))
    with pytest.raises(dc.UserInputError, match=r"frames \(F, H, W, 3\)"):
        masks.video_motion_mask(frames[..., 0], (5, 8, 8))


def test_kmeans_labels_fits_a_sample_of_many_rows_and_labels_them_all():
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.normal(0, 0.1, (3000, 3)), rng.normal(5, 0.1, (1000, 3))])
    labels = masks.kmeans_labels(rows, 2, max_fit_rows=500)
    assert labels.shape == (4000,) and len(set(labels[:3000])) == 1 and len(set(labels[3000:])) == 1
    assert labels[0] != labels[-1]


def test_pca_mask_finds_a_subject_that_differs_in_colour_from_a_textured_background():
    latents, truth = _flat_square_moving_slowly(first_frame_offset=0.0)
    found = masks.pca_mask(latents)
    assert found.shape == truth.shape and mask_iou(found, truth) >= 0.9
    assert np.array_equal(masks.pca_mask(latents), found)  # deterministic (k-means from seeded starts)


def test_kmeans_labels_separates_clear_groups_with_fewer_distinct_rows_than_k():
    rows = np.array([[0.0, 0.0]] * 5 + [[10.0, 10.0]] * 3)
    labels = masks.kmeans_labels(rows, 4)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]


def test_foreground_ratio_counts_high_attention_tokens_inside_the_mask():
    grid = (1, 2, 2)
    record = ProbeRecord(high_attention={"blocks": [[np.packbits([1, 0, 0, 1]), np.packbits([0, 1, 1, 0])]]},
                         sketches={"blocks": [[np.zeros((2, 2)), np.zeros((2, 2))]]})
    mask = np.array([[[True, False], [False, True]]])
    profile = PromptProfile.from_record(record, mask, "p", 0, grid)
    assert profile.foreground_ratio["blocks"].tolist() == [[1.0, 0.0]]
    with pytest.raises(dc.UserInputError, match="mask .* is empty"):
        PromptProfile.from_record(record, np.zeros(grid, dtype=bool), "p", 0, grid)


def test_refresh_generator_and_warmup():
    assert refresh_steps_eq15(50, 7, 6, 6) == list(dc.load_schedule("wan2.1-t2v-14b").block_lists["blocks"].refresh_steps)
    steps = refresh_steps_eq15(50, 7, 12, 2)
    intervals = np.diff(steps[6:])
    assert steps[:7] == list(range(7)) and intervals[0] == 12 and all(np.diff(intervals) <= 0)
    # HunyuanVideo's curve from the paper: large for the first steps, then flat
    curve = np.array([0.47, 0.31, 0.19, 0.11, 0.06, 0.03, 0.012, 0.01, 0.011, 0.01, 0.009, 0.01, 0.02, 0.05, 0.1])
    # median 0.03 -> threshold 0.06: change[4] (step 4 -> 5) is the first at or below it: steps 0-4 warm up
    assert warmup_from_curve(curve) == 5
    assert warmup_from_curve(curve, settle_factor=1.0) == 6


def _synthetic_profile(num_steps=12, depth=6, prompts=2):
    rng = np.random.default_rng(0)
    profiles = []
    for p in range(prompts):
        ratio = np.tile(np.array([0.1, 0.6, 0.2, 0.7, 0.15, 0.3], dtype=np.float32), (num_steps, 1))
        drift = np.cumsum(rng.normal(size=(num_steps, depth, 4, 3)), axis=0).astype(np.float16)
        change = np.linspace(0.5, 0.01, num_steps - 1).astype(np.float32)
        profiles.append(PromptProfile(prompt=f"p{p}", seed=p, token_grid=(1, 2, 2), mask=np.ones((1, 2, 2), bool),
                                      foreground_ratio={"blocks": ratio}, sketches={"blocks": drift},
                                      output_change=change, output_change_abs=change))
    return Profile(prompts=profiles)


def test_derivation_by_tau_and_by_target():
    profile = _synthetic_profile()
    schedule = derive_schedule(profile, DerivationParams(tau=0.25, t_max=3, t_min=1, warmup=2))
    assert schedule.block_lists["blocks"].background_blocks == (0, 2, 4)
    assert schedule.block_lists["blocks"].refresh_steps[:2] == (0, 1)
    # predicted error: zero when every step refreshes, larger with longer reuse
    everything = derive_schedule(profile, DerivationParams(tau=0.25, t_max=1, t_min=1, warmup=1))
    assert everything.provenance["predicted_error"] == 0.0
    sparse = derive_schedule(profile, DerivationParams(tau=0.25, t_max=6, t_min=6, warmup=1))
    assert sparse.provenance["predicted_error"] > schedule.provenance["predicted_error"] > 0
    # a warm-up longer than the run is the whole run, and the provenance says what was used
    assert derive_schedule(profile, DerivationParams(tau=0.25, warmup=100)).provenance["warmup_steps"] == \
        profile.num_steps
    target = derive_for_target(profile, 1.5, warmup=2)
    computed, total = target.provenance["predicted_block_evals"]
    assert abs(computed - total / 1.5) <= 0.05 * total / 1.5
    with pytest.raises(dc.UserInputError, match="no schedule reaches"):
        derive_for_target(profile, 50.0)


def _drift_profile(step_drift, num_steps=12, depth=6):
    """One prompt whose every block's residual moves by `step_drift[s]` from step s - 1 to s."""
    moves = np.zeros((num_steps, depth, 1, 1))
    moves[1:, :, 0, 0] = np.asarray(step_drift, dtype=float)[1:, None]
    sketches = (10.0 + np.cumsum(moves, axis=0)).astype(np.float16)  # |sum of residuals| stays ~60 per step
    flat = np.full(num_steps - 1, 0.1, dtype=np.float32)  # a flat step-change curve: warm-up 1 from the curve
    return Profile(prompts=[PromptProfile(
        prompt="p", seed=0, token_grid=(1, 1, 1), mask=np.ones((1, 1, 1), bool),
        foreground_ratio={"blocks": np.full((num_steps, depth), 0.1, np.float32)}, sketches={"blocks": sketches},
        output_change=flat, output_change_abs=flat)])


def test_residual_sketches_beyond_float16_range_stay_finite():
    # Real models' residuals reach values that float16 (max 65504) cannot hold; the predicted error must not
    # become NaN (the target search would then find no schedule).
    bits = np.packbits(np.ones(4, dtype=bool))
    sketches = [[np.full((2, 3), 1e5 * (1 + s), np.float32)] for s in range(4)]
    record = ProbeRecord(high_attention={"blocks": [[bits]] * 4}, sketches={"blocks": sketches},
                         output_change=[0.1] * 3, output_change_abs=[0.1] * 3)
    prompt = PromptProfile.from_record(record, np.ones((1, 2, 2), bool), "p", 0, (1, 2, 2))
    schedule = derive_schedule(Profile(prompts=[prompt]), DerivationParams(tau=2.0, t_max=3, t_min=3, warmup=1))
    assert np.isfinite(prompt.sketches["blocks"]).all() and 0 < schedule.provenance["predicted_error"] < np.inf


def test_predicted_error_adds_up_over_reuse_steps():
    profile = _drift_profile(np.ones(12))

    def error(refresh):
        return profile.predicted_error(dc.Schedule.from_dict({
            "format_version": 1, "name": "x", "num_steps": 12,
            "block_lists": {"blocks": {"num_blocks": 6, "background_blocks": ["0-5"], "refresh_steps": refresh}}}))

    # All 6 blocks cached; at step s each residual is 10 + s, so the relative drift after k reused steps is
    # 6k / (6 (10 + s)). Steps 1-3 reusing step 0: 1/11 + 2/12 + 3/13; with step 2 refreshed: 1/11 + 1/13.
    assert error([0, "4-11"]) == pytest.approx(1 / 11 + 2 / 12 + 3 / 13, rel=0.01)
    assert error([0, 2, "4-11"]) == pytest.approx(1 / 11 + 1 / 13, rel=0.01)
    assert error([0, 1, "3-11"]) == pytest.approx(1 / 12, rel=0.01)  # one reuse step: its own drift
    assert error(["0-11"]) == 0.0


def test_target_search_extends_the_warm_up_when_early_steps_drift():
    # Large drift over the first 4 of 25 steps, then almost none; the step-change curve alone says warm-up 1.
    profile = _drift_profile([0, 8, 8, 8] + [0.01] * 21, num_steps=25)
    assert warmup_from_curve(profile.output_change()) == 1
    schedule = derive_for_target(profile, 1.5)
    assert schedule.provenance["warmup_steps"] >= 4
    assert set(range(4)) <= set(schedule.block_lists["blocks"].refresh_steps)
    fixed = derive_for_target(profile, 1.5, warmup=5)  # a given warm-up is kept
    assert fixed.provenance["warmup_steps"] == 5
    assert fixed.provenance["predicted_error"] >= schedule.provenance["predicted_error"]  # one of the searched


def test_profiling_a_real_pipeline_is_deterministic_and_bounded(tmp_path):
    pipe = tiny_wan.tiny_wan_pipeline(num_layers=4)
    pipe.scheduler = make_scheduler("unipc", 5.0)
    pipe.set_progress_bar_config(disable=True)
    grid = token_grid(pipe, width=32, height=32, num_frames=9)

    def denoise(prompt, seed):
        return pipe(
            prompt=prompt, negative_prompt="", height=32, width=32, num_frames=9, num_inference_steps=6,
            guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="latent",
            max_sequence_length=16).frames

    request = ProfileRequest(prompts=[("a red square moves left", 1)], block_lists=["blocks"], token_grid=grid,
                             max_queries=8)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "001.npz").write_bytes(b"an earlier run's profile")
    first = run_profile(pipe.transformer, denoise, request, out_dir=tmp_path)
    # a fresh run (no --resume) removed the earlier run's profiles, which a later --resume would have mixed in
    assert sorted(p.name for p in (tmp_path / "profiles").iterdir()) == ["000.npz", "run.json"]
    second = run_profile(pipe.transformer, denoise, request)
    ratio = first.foreground_ratio("blocks")
    assert ratio.shape == (6, 4) and np.array_equal(ratio, second.foreground_ratio("blocks"))
    assert len(first.output_change()) == 5
    assert first.prompts[0].sketches["blocks"].shape == (6, 4, min(128, int(np.prod(grid))), 32)  # bounded
    # the probe removed itself: the model is plain again, and a saved profile loads back
    assert not hasattr(pipe.transformer.blocks[0], "_diffusers_hook") or \
        "delta_profile_block" not in pipe.transformer.blocks[0]._diffusers_hook.hooks
    loaded = PromptProfile.load(tmp_path / "profiles" / "000.npz")
    assert np.array_equal(loaded.foreground_ratio["blocks"], ratio)


def test_profile_an_i2v_model_on_the_front_ends_image(tmp_path, monkeypatch, capsys):
    # In this process (the command line is tested below). An image-to-video transformer cannot run without
    # its image (36 input channels), so a profile that completes ran on it.
    from PIL import Image

    from delta_cache.models.wan.tiny import write_tiny_checkpoint
    from delta_cache.video import read_video
    from script_loader import load_script

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", num_layers=4, i2v=True)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    pixels = np.full((64, 128, 3), 90, dtype=np.uint8)
    pixels[10:40, 20:60] = (220, 40, 40)
    image = tmp_path / "input.png"
    Image.fromarray(pixels).save(image)
    profile_model = load_script(REPO / "scripts" / "profile_model.py")
    out = tmp_path / "profile"
    common = ["--task", "i2v-14B", "--ckpt_dir", str(ckpt), "--sample_steps", "8"]
    profile_model.main([*common, "--image", str(image), "--prompt", "a red square", "--target_speedup", "1.3",
                        "--max_queries", "16", "--out", str(out)])
    schedule = dc.load_schedule(out / "schedule.json")
    assert schedule.name == "profiled-i2v-14b" and schedule.provenance["image"] == str(image)
    # the size generate.py gives this 2:1 image at the area of 64*48
    assert schedule.provenance["output_size"] == "64*32"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    load_script(REPO / "Wan2.1" / "generate.py").main([*common, "--image", str(image), "--cache_schedule",
                                                       str(out / "schedule.json"), "--save_file", str(tmp_path / "v.mp4")])
    computed, total = schedule.provenance["predicted_block_evals"]
    assert f"cond {computed}/{total}" in capsys.readouterr().out and computed < total
    assert read_video(tmp_path / "v.mp4").shape == (5, 32, 64, 3)
    # the front end's image checks, before anything loads
    with pytest.raises(dc.UserInputError, match="--image is required for task i2v-14B"):
        profile_model.main([*common, "--prompt", "x", "--out", str(tmp_path / "bad")])
    with pytest.raises(dc.UserInputError, match="--first_frame and --last_frame are both required"):
        profile_model.main(["--task", "flf2v-14B", "--ckpt_dir", str(ckpt), "--first_frame", str(image),
                            "--prompt", "x", "--out", str(tmp_path / "bad")])
    with pytest.raises(dc.UserInputError, match="--last_frame is for the wan image tasks .*, not --task t2v-1.3B"):
        profile_model.main(["--task", "t2v-1.3B", "--ckpt_dir", str(ckpt), "--last_frame", str(image),
                            "--prompt", "x", "--out", str(tmp_path / "bad")])
    with pytest.raises(dc.UserInputError, match="are for the wan image tasks"):
        profile_model.main(["--family", "hunyuan_video", "--ckpt_dir", str(ckpt), "--image", str(image),
                            "--prompt", "x", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_profile_cli_writes_a_schedule_that_generate_uses(tmp_path, monkeypatch, capsys):
    from delta_cache.models.wan.tiny import write_tiny_checkpoint
    from script_loader import load_script

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", num_layers=6)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    out = tmp_path / "profile"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_model.py"), "--ckpt_dir", str(ckpt),
                           "--size", "32*32", "--frame_num", "9", "--sample_steps", "10", "--prompt", "a red square",
                           "--target_speedup", "1.3", "--max_queries", "16", "--threads", "1", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("schedule.json", "foreground_ratio.png", "step_change.png", "schedule.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    schedule = dc.load_schedule(out / "schedule.json")
    assert schedule.num_steps == 10 and schedule.provenance["prompts"] == ["a red square"]
    # generate.py in this process (its command line is tested in test_wan_generate.py)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    load_script(REPO / "Wan2.1" / "generate.py").main([
        "--size", "832*480", "--frame_num", "1", "--ckpt_dir", str(ckpt), "--sample_steps", "10",
        "--cache_schedule", str(out / "schedule.json"), "--save_file", str(tmp_path / "v.mp4")])
    computed, total = schedule.provenance["predicted_block_evals"]
    assert f"cond {computed}/{total}" in capsys.readouterr().out
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_model.py"), "--ckpt_dir", str(ckpt),
                          "--size", "30*30", "--prompt", "x", "--out", str(tmp_path / "bad")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "multiples of 16" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_model.py"), "--ckpt_dir", str(ckpt),
                          "--prompt", "x", "--threads", "0", "--out", str(tmp_path / "bad")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--threads: must be >= 1" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    for flags, message in ((["--tau", "0.3", "--forecast", "any"], "--forecast any is for --target_speedup"),
                           (["--refresh_threshold", "0.1"], "--refresh_threshold needs --tau"),
                           (["--tau", "0.3", "--refresh_rule", "curve"], "--refresh_rule is for --target_speedup")):
        bad = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_model.py"), "--ckpt_dir", str(ckpt),
                              "--prompt", "x", "--out", str(tmp_path / "bad"), *flags],
                             env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()
    # --compare_with a schedule that does not fit: one line from the checkpoint's config, before loading
    import delta_cache.models.runner as runner

    with monkeypatch.context() as patched:
        patched.setattr(runner, "load_runner", lambda *a, **k: pytest.fail("loaded before the compare check"))
        for preset, message in (("hunyuanvideo-720p", "names block list 'transformer_blocks', which this model"),
                                ("wan2.1-t2v-14b", "made for 40 blocks in 'blocks', but this model has 6")):
            with pytest.raises(dc.UserInputError, match=message):
                load_script(REPO / "scripts" / "profile_model.py").main([
                    "--ckpt_dir", str(ckpt), "--prompt", "x", "--compare_with", preset, "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    # re-derived from the saved profile (in this process): the curve rule and the linear forecast reach the file
    load_script(REPO / "scripts" / "profile_model.py").main([
        "--ckpt_dir", str(ckpt), "--size", "32*32", "--frame_num", "9", "--sample_steps", "10", "--prompt",
        "a red square", "--tau", "1.0", "--refresh_threshold", "0.05", "--forecast", "linear", "--max_queries", "16",
        "--threads", "1", "--out", str(out), "--resume"])
    curve = dc.load_schedule(out / "schedule.json")
    assert curve.forecast == "linear" and curve.provenance["refresh_rule"] == "curve"
    assert curve.block_lists["blocks"].background_blocks == tuple(range(6))  # every R < 1
    json.loads((out / "schedule.json").read_text())
    # --resume with another step count would mix profiles of two runs: one line, the saved files untouched
    saved = {p.name: p.read_bytes() for p in (out / "profiles").iterdir()}
    with pytest.raises(dc.UserInputError, match=r"--resume: the profiles in .* were made with other settings "
                                                r"\(sample_steps 10 -> 8\)"):
        load_script(REPO / "scripts" / "profile_model.py").main([
            "--ckpt_dir", str(ckpt), "--size", "32*32", "--frame_num", "9", "--sample_steps", "8", "--prompt",
            "a red square", "--max_queries", "16", "--threads", "1", "--out", str(out), "--resume"])
    assert {p.name: p.read_bytes() for p in (out / "profiles").iterdir()} == saved
    # (profiles of the old default mask source: the line says how to reuse them)
    with pytest.raises(dc.UserInputError, match=r"other settings \(mask_source 'video_motion' -> 'motion'\); give "
                                                r"--mask_source video_motion .* to reuse them"):
        load_script(REPO / "scripts" / "profile_model.py").main([
            "--ckpt_dir", str(ckpt), "--size", "32*32", "--frame_num", "9", "--sample_steps", "10", "--prompt",
            "a red square", "--max_queries", "16", "--mask_source", "motion", "--out", str(out), "--resume"])
    with pytest.raises(dc.UserInputError, match=r"other settings \(sample_guide_scale 5.0 -> 1.0\)"):
        load_script(REPO / "scripts" / "profile_model.py").main([
            "--ckpt_dir", str(ckpt), "--size", "32*32", "--frame_num", "9", "--sample_steps", "10", "--prompt",
            "a red square", "--max_queries", "16", "--sample_guide_scale", "1.0", "--out", str(out), "--resume"])


@pytest.mark.parametrize("flags, message", [
    (["--sample_steps", "0"], "--sample_steps: must be >= 1"),
    (["--max_queries", "0"], "--max_queries: must be >= 1"),
    (["--warmup", "0"], "--warmup: must be >= 1"),
    (["--target_speedup", "0.5"], "--target_speedup: must be a finite number at least 1, got 0.5"),
    (["--tau", "nan"], "--tau: must be a finite number at least 0, got nan"),
    (["--sample_shift", "0"], "--sample_shift: must be a finite number above 0, got 0"),
    (["--out", __file__], "is a file; give a folder"),
    (["--tau", "0.3", "--t_min", "4", "--t_max", "2"], "refresh intervals need --t_min <= --t_max"),
    (["--tau", "0.3", "--t_max", "1"], "need --t_min <= --t_max, got 2 and 1 (defaults 2 and 6)"),
    (["--t_max", "3"], "--t_max is for --tau"),  # (was ignored: --target_speedup searches the intervals)
    (["--tau", "0.3", "--refresh_threshold", "0.1", "--t_min", "3"], "--t_min is for --tau with the paper's"),
    (["--warmup", "20", "--sample_steps", "10"], "--warmup 20 leaves no step to reuse of --sample_steps 10"),
    (["--prompts", "{empty}"], "the file has no prompt (one per line)"),
])
def test_profile_cli_refuses_bad_values_before_loading(tmp_path, capsys, flags, message):
    from script_loader import load_script

    (tmp_path / "empty.txt").write_text("\n  \n")
    argv = ["--ckpt_dir", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "out"),
            *(flag.format(empty=tmp_path / "empty.txt") for flag in flags)]
    with pytest.raises((SystemExit, dc.UserInputError)) as raised:
        load_script(REPO / "scripts" / "profile_model.py").main(argv)
    text = str(raised.value) if isinstance(raised.value, dc.UserInputError) else capsys.readouterr().err
    assert message in text and not (tmp_path / "out").exists()


def test_profile_cli_hunyuan_video_covers_both_block_lists(tmp_path):
    from delta_cache.models.hunyuan_video.tiny import write_tiny_checkpoint

    model_base = write_tiny_checkpoint(tmp_path / "ckpts", num_layers=3, num_single_layers=4)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    out = tmp_path / "profile"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_model.py"), "--family", "hunyuan_video",
                           "--ckpt_dir", str(model_base), "--size", "32*32", "--frame_num", "9", "--sample_steps", "8",
                           "--prompt", "cat walk on grass", "--tau", "0.3", "--t_max", "3", "--t_min", "2",
                           "--mask_source", "motion",  # (random weights: their decoded video shows no subject)
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    schedule = dc.load_schedule(out / "schedule.json")
    assert set(schedule.block_lists) == {"transformer_blocks", "single_transformer_blocks"}
    assert schedule.block_lists["transformer_blocks"].num_blocks == 3
    assert schedule.block_lists["single_transformer_blocks"].num_blocks == 4
    ratio = PromptProfile.load(out / "profiles" / "000.npz").foreground_ratio
    assert ratio["transformer_blocks"].shape == (8, 3) and ratio["single_transformer_blocks"].shape == (8, 4)
    for list_name, block_list in schedule.block_lists.items():  # tau really decides which blocks are cached
        expected = tuple(int(b) for b in np.flatnonzero(ratio[list_name].mean(axis=0) < 0.3))
        assert block_list.background_blocks == expected


def test_curve_refresh_rule_accumulates_the_step_change():
    curve = np.array([0.5, 0.1, 0.1, 0.1, 0.3, 0.05, 0.05, 0.05, 0.05])  # change from step i to i + 1
    # warm-up 1; accumulate from step 1: 0.5 >= 0.2 (refresh 1), 0.1, 0.2 (refresh 3), 0.1, 0.4 (refresh 5),
    # 0.05, 0.1, 0.15, 0.2 (refresh 9)
    assert refresh_steps_from_curve(curve, 10, 1, 0.2) == [0, 1, 3, 5, 9]
    assert refresh_steps_from_curve(curve, 10, 3, 0.2) == [0, 1, 2, 4, 5, 9]
    with pytest.raises(dc.UserInputError, match="threshold must be > 0"):
        refresh_steps_from_curve(curve, 10, 1, 0.0)
    # the candidate thresholds reach every sequence a fine sweep of thresholds finds
    rng = np.random.default_rng(1)
    curve = rng.uniform(0.01, 0.2, size=15)
    for warmup in (1, 4):
        swept = {tuple(refresh_steps_from_curve(curve, 16, warmup, t)) for t in np.linspace(1e-4, 3.0, 20000)}
        candidates = {tuple(refresh_steps_from_curve(curve, 16, warmup, t)) for t in curve_thresholds(curve, warmup)}
        assert swept <= candidates


def test_target_search_uses_the_curve_rule_where_the_change_peaks_mid_way():
    # Residuals drift fast in steps 8-13 of 24 and slowly elsewhere, and the step-change curve says so: Eq. 15's
    # shrinking intervals cannot put dense refreshes in the middle, the curve rule can.
    drift = np.full(24, 0.05)
    drift[8:14] = 3.0
    profile = _drift_profile(drift, num_steps=24)
    for prompt in profile.prompts:
        prompt.output_change = prompt.output_change_abs = drift[1:].astype(np.float32)
    eq15 = derive_for_target(profile, 1.6, refresh_rules=("eq15",))
    either = derive_for_target(profile, 1.6)
    assert either.provenance["refresh_rule"] == "curve"
    assert either.provenance["predicted_error"] < eq15.provenance["predicted_error"]
    refresh = either.block_lists["blocks"].refresh_steps
    assert refresh == tuple(refresh_steps_from_curve(profile.output_change(), 24, either.provenance["warmup_steps"],
                                                     either.provenance["refresh_threshold"]))
    assert set(range(9, 14)) <= set(refresh)  # every fast-drifting step computed
    computed, total = either.provenance["predicted_block_evals"]
    assert abs(computed - total / 1.6) <= 0.05 * total / 1.6
    with pytest.raises(dc.UserInputError, match="refresh rules"):
        derive_for_target(profile, 1.6, refresh_rules=("steps",))


def test_predicted_error_of_the_linear_forecast():
    # Residuals that grow linearly in the step: a line through two refreshes forecasts them exactly, except
    # where the line would run through two warm-up steps (the hooks hold there, as here at step 2).
    profile = _drift_profile(np.ones(12))

    def error(forecast):
        return profile.predicted_error(dc.Schedule.from_dict({
            "format_version": 1, "name": "x", "num_steps": 12, "forecast": forecast,
            "block_lists": {"blocks": {"num_blocks": 6, "background_blocks": ["0-5"],
                                       "refresh_steps": [0, 1, 3, 6, 9, 11]}}}))

    assert error("linear") == pytest.approx(1 / 12, rel=0.01)
    assert error("hold") == pytest.approx(1 / 12 + 1 / 14 + 2 / 15 + 1 / 17 + 2 / 18 + 1 / 20, rel=0.01)
    either = derive_for_target(_drift_profile(np.ones(25), num_steps=25), 1.5, forecasts=("hold", "linear"))
    assert either.forecast == "linear" and either.provenance["forecast"] == "linear"
    with pytest.raises(dc.UserInputError, match="forecasts must be"):
        derive_for_target(profile, 1.2, forecasts=("quadratic",))
