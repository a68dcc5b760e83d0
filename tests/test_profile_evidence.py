"""The profiling evidence script: IoU helper, block-set choices, equal compute counted by the cache, targets,
the written preset and the profile_model.py command that reproduces it."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

import delta_cache as dc
from delta_cache.profiling import evidence, evidence_results, masks
from delta_cache.profiling.profile import Profile, PromptProfile
from delta_cache.synthetic import make_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
NATIVE = {"width": 96, "height": 96, "num_frames": 5}  # 2 x 6 x 6 tokens; 32x32 would leave every true mask empty
STEPS = 10  # the paper preset at 10 steps reuses its background blocks on one step


def _script(name: str):
    return load_script(REPO / "scripts" / f"{name}.py")


# ---- pure helpers ------------------------------------------------------------------------------------------

def test_mask_iou():
    grid = (2, 6, 6)
    truth = masks.pixel_mask_to_tokens(make_video(0, "eval", num_frames=5, height=96, width=96).mask, grid)
    assert truth.any() and not truth.all()
    assert evidence_results.mask_iou(truth, truth) == 1.0
    assert evidence_results.mask_iou(np.zeros_like(truth), truth) == 0.0
    assert evidence_results.mask_iou(~truth, truth) == 0.0
    assert evidence_results.mask_iou(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])) == pytest.approx(1 / 3)
    assert evidence_results.mask_iou(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        evidence_results.mask_iou(np.zeros((2, 2)), np.zeros(4))


def test_generated_foreground_is_the_true_mask_of_a_drawn_video():
    # A model that drew the rendered video exactly: the analyser's foreground is the rendered mask.
    for index in (0, 1, 7):
        video = make_video(index, "eval", num_frames=5, height=96, width=96)
        found = evidence.generated_foreground(video.frames.astype(np.float32) / 255.0)
        assert evidence_results.mask_iou(found, video.mask) > 0.99
    # but a video with the same prompt and its objects elsewhere (another render) is far from it
    other = make_video(0, "eval", num_frames=5, height=96, width=96)
    moved = np.roll(other.frames, 30, axis=2)
    assert evidence_results.mask_iou(evidence.generated_foreground(moved / 255.0), other.mask) < 0.5


def test_block_choices_and_equal_compute_schedules():
    ratio = np.array([0.3, 0.1, 0.5, 0.2, 0.4])
    assert evidence.lowest_ratio_blocks(ratio, 2) == (1, 3)
    assert evidence.highest_ratio_blocks(ratio, 2) == (2, 4)
    assert evidence.lowest_ratio_blocks([0.1, 0.1, 0.2], 1) == (0,)
    assert evidence.highest_ratio_blocks([0.1, 0.2, 0.2], 1) == (1,)
    randoms = [evidence.random_blocks({"blocks": 40}, {"blocks": 28}, seed)["blocks"] for seed in (0, 1, 2)]
    assert len(set(randoms)) == 3 and all(len(set(r)) == 28 and max(r) < 40 for r in randoms)
    assert randoms[0] == evidence.random_blocks({"blocks": 40}, {"blocks": 28}, 0)["blocks"]

    preset = dc.load_schedule("wan2.1-t2v-14b")
    other = evidence.equal_compute_schedule(preset, {"blocks": randoms[1]}, name="r1")
    assert other.block_lists["blocks"].background_blocks == randoms[1]
    assert other.block_lists["blocks"].refresh_steps == preset.block_lists["blocks"].refresh_steps
    for steps in (10, 50, 100):
        assert other.predicted_block_evals({"blocks": 40}, steps) == preset.predicted_block_evals({"blocks": 40}, steps)
    with pytest.raises(ValueError, match="27 background blocks"):
        evidence.equal_compute_schedule(preset, {"blocks": range(27)}, name="short")
    with pytest.raises(dc.ScheduleError, match="beyond num_blocks"):
        evidence.equal_compute_schedule(preset, {"blocks": range(13, 41)}, name="deep")


def test_tau_and_refresh_parameters_for_profile_model():
    ratios = {"blocks": np.array([0.1, 0.5, 0.2, 0.7])}
    tau = evidence.separating_tau(ratios, {"blocks": {0, 2}})
    assert 0.2 < tau <= 0.5 and set(np.flatnonzero(ratios["blocks"] < tau)) == {0, 2}
    assert evidence.separating_tau(ratios, {"blocks": {0, 1}}) is None  # 0.5 cached but 0.2 not
    assert evidence.separating_tau({"blocks": np.array([0.1, 0.1])}, {"blocks": {0}}) is None  # tie
    assert evidence.separating_tau(ratios, {"blocks": set()}) == 0.0
    preset = dc.load_schedule("wan2.1-t2v-14b")
    assert evidence.eq15_parameters(preset.block_lists["blocks"], 50) == (7, 6, 6)
    hunyuan = dc.load_schedule("hunyuanvideo-720p").block_lists["single_transformer_blocks"]
    params = evidence.eq15_parameters(hunyuan, 50)
    assert params is None or evidence.refresh_steps_eq15(50, *params) == list(hunyuan.refresh_steps)


def test_paired_comparison_and_budget():
    rng = np.random.default_rng(0)
    base = rng.normal(30, 2, size=16)
    assert evidence_results.paired_comparison(base + 3 + rng.normal(0, 0.5, 16), base)["verdict"] == "better"
    worse = evidence_results.paired_comparison(base - 3, base)
    assert worse["verdict"] == "worse" and worse["wins"] == 0 and worse["mean_diff"] == pytest.approx(-3)
    noise = np.array([0.5, -0.5] * 8)
    assert evidence_results.paired_comparison(base + noise, base)["verdict"] == "not clearly different"
    assert evidence_results.paired_comparison([31.0], [30.0])["verdict"] == "higher"
    assert evidence_results.paired_comparison([float("inf")], [50.0])["mean_diff"] == evidence_results.PSNR_CAP - 50
    assert evidence_results.budget_offset(210, 400, 2.0)[1] and not evidence_results.budget_offset(211, 400, 2.0)[1]
    assert evidence_results.budget_offset(190, 400, 2.0) == (pytest.approx(-0.05), True)


def test_size_comes_from_tiny_model_json(tmp_path):
    with pytest.raises(dc.UserInputError, match="no tiny_model.json"):
        evidence.resolve_size(tmp_path, None, None)
    assert evidence.resolve_size(tmp_path, "64*48", 9) == (64, 48, 9)
    (tmp_path / "tiny_model.json").write_text(json.dumps({"native_size": NATIVE}))
    assert evidence.resolve_size(tmp_path, None, None) == (96, 96, 5)
    with pytest.raises(dc.UserInputError, match="4n\\+1"):
        evidence.resolve_size(tmp_path, None, 4)


# ---- end to end on a random 40-block checkpoint ------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from delta_cache.models.wan.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("evidence")
    ckpt = write_tiny_checkpoint(root / "ckpt", num_layers=40, vae_base_dim=4)  # 2 decodes no palette colour
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": NATIVE}))
    out = root / "out"
    # 2 profiled prompts: with 1, R (counts over a few mask tokens) ties at the 28th block and no tau separates
    argv = ["--ckpt_dir", str(ckpt), "--num_pairs", "1", "--profile_prompts", "2", "--sample_steps", str(STEPS),
            "--max_queries", "16", "--out", str(out), "--write_preset", str(out / "tiny-profiled.json")]
    result = _script("profile_evidence").main(argv)
    return result, out


def test_outputs_and_one_table(run, capsys):
    result, out = run
    text = (out / "evidence.md").read_text()
    assert text == result.markdown()
    assert sum(line.startswith("| section |") for line in text.splitlines()) == 1
    assert "target >= 0.5" in text and "Verdicts" in text
    data = json.loads((out / "evidence.json").read_text())
    assert data["preset"] == "wan2.1-t2v-14b" and len(data["eval_pairs"]) == 1 and data["truth"] == "generated"
    assert set(data["eval_pairs"][0]["iou"]) == {"motion/generated", "motion/rendered", "generated/rendered",
                                                 "rendered_motion/rendered", "latent_motion/generated",
                                                 "latent_motion/rendered"}
    assert "rendered_motion" in data["eval_pairs"][0]["mask_tokens"] and "rendered_motion vs rendered" in text
    assert "latent_motion vs generated" in text  # (the profiler's motion source, beside its default)
    assert data["variants"][1]["schedule"]["provenance"]["mask_source"] == "video_motion"
    assert data["foreground_ratio"]["generated"] is not None and data["foreground_ratio"]["motion"] is not None
    assert data["run"]["width"] == 96 and data["run"]["num_frames"] == 5 and data["run"]["num_steps"] == STEPS
    keys = [v["key"] for v in data["variants"]]
    assert keys[:7] == ["profiled-true-masks", "profiled-motion-masks", "reversed", "random-0", "random-1",
                        "random-2", "preset"]
    assert keys[7:] == ["target-1.5x", "target-2x"]
    assert (out / "profile_prompts.txt").read_text().splitlines() == [p for _, p, _ in result.profile_prompts]
    saved = np.load(out / "profile_masks" / "000.npy")  # the true pixel mask: the generation's foreground
    assert saved.dtype == bool and saved.shape == (5, 96, 96)
    assert result.training.truth_pixels[0] is not None and np.array_equal(saved, result.training.truth_pixels[0])
    iou = data["motion_mask_iou"]["mean"]
    assert iou is None or 0.0 <= iou <= 1.0


def test_equal_compute_variants_are_counted_by_the_cache(run):
    result, out = run
    preset = dc.load_schedule("wan2.1-t2v-14b")
    computed, total = preset.predicted_block_evals({"blocks": 40}, STEPS)
    assert computed < total  # the preset really skips blocks at this step count
    equal = [v for v in result.variants if v.section == "equal compute"]
    assert len(equal) == 7 and not any(v.error for v in equal)
    for v in equal:  # counted from the cache's real skips: 2 CFG branches x 1 pair
        assert (v.computed, v.total) == (2 * computed, 2 * total), v.key
        assert v.branch_calls == 2 * STEPS
        assert len(v.schedule.block_lists["blocks"].background_blocks) == 28
        assert dc.load_schedule(out / "schedules" / f"{v.key}.json").to_dict() == v.schedule.to_dict()
        assert all(np.isfinite(v.psnr)) and v.psnr[0] > 0
        assert len(v.uncached_seconds) == 1 and result.wall_speedup(v) > 0  # timed against alternating runs
    by_key = {v.key: set(v.schedule.block_lists["blocks"].background_blocks) for v in equal}
    ratio = result.ratios_truth["blocks"]
    others = lambda chosen: [ratio[b] for b in range(40) if b not in chosen]  # noqa: E731
    assert max(ratio[b] for b in by_key["profiled-true-masks"]) <= min(others(by_key["profiled-true-masks"]))
    assert min(ratio[b] for b in by_key["reversed"]) >= max(others(by_key["reversed"]))  # the top-R blocks
    assert by_key["reversed"] != by_key["profiled-true-masks"]
    assert len({frozenset(by_key[f"random-{s}"]) for s in (0, 1, 2)}) == 3
    assert by_key["preset"] == set(preset.block_lists["blocks"].background_blocks)


def test_target_rows_meet_their_budget(run):
    result, _ = run
    targets = [v for v in result.variants if v.section == "target"]
    assert [v.target for v in targets] == [1.5, 2.0]
    feasible = [v for v in targets if not v.error]
    assert feasible, [v.error for v in targets]
    for v in feasible:
        budget = v.total / v.target
        assert abs(v.computed - budget) <= 0.05 * budget + 1e-6, (v.key, v.computed, budget)
        predicted, _ = v.schedule.provenance["predicted_block_evals"]
        assert v.computed == 2 * predicted  # the schedule's own prediction, both branches
        assert len(v.uncached_seconds) == 1 and result.wall_speedup(v) > 0  # timed against alternating runs
    for v in targets:
        assert v.error or f"target {v.target:g}x" in result.markdown()


def test_written_preset_and_its_profile_model_command(run):
    result, out = run
    preset = dc.load_schedule(out / "tiny-profiled.json")
    profiled = result.variant("profiled-true-masks").schedule
    paper = dc.load_schedule("wan2.1-t2v-14b")
    assert preset.name == "tiny-profiled"
    assert preset.block_lists["blocks"].background_blocks == profiled.block_lists["blocks"].background_blocks
    assert preset.block_lists["blocks"].refresh_steps == paper.block_lists["blocks"].refresh_steps
    assert preset.provenance["predicted_block_evals"] == [992, 2000]
    assert preset.provenance["evidence"]["eval_pairs"] == 1 and preset.provenance["mask_source"] == "files"
    assert "analyser" in preset.provenance["masks"]
    assert result.reproduce is not None, result.reproduce_note  # deterministic on CPU with these seeds
    assert preset.provenance["reproduce"] == result.reproduce
    argv = shlex.split(result.reproduce)
    assert argv[:2] == ["python", "scripts/profile_model.py"] and "--size" not in argv  # native size by default
    _script("profile_model").main(argv[2:])
    again = dc.load_schedule(out / "reproduce" / "schedule.json")
    assert again.provenance["size"] == "96*96" and again.provenance["frame_num"] == 5
    profiles = [PromptProfile.load(out / "reproduce" / "profiles" / f"{i:03d}.npz") for i in range(2)]
    np.testing.assert_allclose(Profile(profiles).block_foreground_ratio("blocks"), result.ratios_truth["blocks"],
                               rtol=0, atol=1e-7)  # the same R from scratch
    assert again.block_lists["blocks"].background_blocks == preset.block_lists["blocks"].background_blocks
