"""scripts/bench_fidelity.py and delta_cache/baselines.py: block counting, naive step skipping, threshold
tuning, MagCache calibration, and the whole benchmark on tiny random checkpoints (CPU, seconds)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_wan import run, tiny_wan_pipeline

from delta_cache import apply_delta_cache, remove_delta_cache
from delta_cache.baselines import (
    BlockCounter,
    CacheDiT,
    StepSkipping,
    apply_step_skipping,
    calibrate_mag_ratios,
    evenly_spread_steps,
    remove_step_skipping,
    steps_for_block_budget,
    tune_threshold,
)
from delta_cache.synthetic import make_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_fidelity.py"


def bench_script():
    return load_script(SCRIPT)


def write_native_size(folder: Path, width: int, height: int, frames: int) -> None:
    (folder / "tiny_model.json").write_text(json.dumps({"native_size": {"width": width, "height": height,
                                                                        "num_frames": frames}}))


# --- pieces ----------------------------------------------------------------------------------------------

def test_evenly_spread_steps_and_budget():
    assert evenly_spread_steps(6, 2) == [0, 5]
    assert evenly_spread_steps(10, 4) == [0, 3, 6, 9]
    assert evenly_spread_steps(5, 9) == [0, 1, 2, 3, 4]
    assert evenly_spread_steps(7, 1) == [0]
    for n, k in ((50, 25), (50, 49), (12, 10), (3, 2)):
        steps = evenly_spread_steps(n, k)
        assert len(set(steps)) == k and steps[0] == 0 and steps[-1] == n - 1 and steps == sorted(steps)
    # 792 of 960 block evaluations (40 blocks, 2 branches, 12 steps): 10 steps give 800, 9 give 720.
    assert steps_for_block_budget(792, 40, 2, 12) == 10
    assert steps_for_block_budget(1984, 40, 2, 50) == 25  # the 14B preset at 50 steps: 24.8 steps
    assert steps_for_block_budget(10, 40, 2, 12) == 2  # never fewer than the first and the last step


def test_tune_threshold_brackets_and_bisects():
    def share(threshold):  # falls smoothly from 1 as the threshold grows
        return 1.0 / (1.0 + 20.0 * threshold)

    result = tune_threshold(share, 0.5, initial=0.001, tolerance=0.02, max_runs=20)
    assert result.within_tolerance and abs(result.reached - 0.5) <= 0.01
    assert abs(result.threshold - 0.05) < 0.005
    assert result.trials[0][0] == 0.001 and len(result.trials) < 20

    def jump(threshold):  # unreachable target: keep the closest share, say so
        return 1.0 if threshold < 0.3 else 0.1

    result = tune_threshold(jump, 0.5, initial=0.05, max_runs=5)
    assert len(result.trials) == 5 and not result.within_tolerance
    assert result.reached == 0.1 and result.threshold >= 0.3


def test_step_skipping_reuses_whole_calls():
    pipe = tiny_wan_pipeline(num_layers=4)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    counter = BlockCounter(transformer)
    outputs = []
    handle = transformer.register_forward_hook(lambda module, args, out: outputs.append(out[0].clone()))
    method = StepSkipping(evenly_spread_steps(6, 2), 6)
    method.attach(transformer)
    try:
        run(pipe, steps=6)
        assert counter.count == 2 * 2 * 4  # 2 of 6 steps x (cond, uncond) x 4 blocks really ran
        run(pipe, steps=6)  # the state is reset after each pipeline call
        assert counter.count == 2 * (2 * 2 * 4)
    finally:
        stats = method.detach(transformer)
        handle.remove()
    assert stats == {"computed_calls": 8, "skipped_calls": 16}
    first = outputs[:12]  # calls alternate cond, uncond per step
    for step in range(1, 5):  # skipped steps return the branch's output of step 0
        assert torch.equal(first[2 * step], first[0]) and torch.equal(first[2 * step + 1], first[1])
    assert not torch.equal(first[0], first[1])  # the branches keep separate outputs
    assert not torch.equal(first[10], first[0])  # the last step is computed again

    # Without a step index (HunyuanVideoPipeline) the hook counts the branch's calls, until the reset.
    counter.counts = dict.fromkeys(counter.counts, 0)
    hook = apply_step_skipping(transformer, [0, 2], 4)
    latents = torch.randn(1, 16, 2, 4, 4)
    text = torch.randn(1, 8, 32)
    try:
        with torch.no_grad():
            for _ in range(2):
                for step in range(4):
                    with transformer.cache_context("cond"):
                        transformer(hidden_states=latents, timestep=torch.tensor([900 - 200 * step]),
                                    encoder_hidden_states=text, return_dict=False)
                transformer._reset_stateful_cache()
    finally:
        remove_step_skipping(transformer)
    assert (hook.computed_calls, hook.skipped_calls) == (4, 4)
    assert counter.count == 4 * 4


def test_block_counter_counts_only_real_forwards():
    pipe = tiny_wan_pipeline(num_layers=4)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    counter = BlockCounter(transformer)
    run(pipe, steps=6)
    assert counter.count == 6 * 2 * 4
    # A schedule skipping blocks 1-2 on steps 1, 2, 4 of 6 (step 3 and 5 refresh).
    schedule = {"format_version": 1, "num_steps": 6,
                "block_lists": {"blocks": {"background_blocks": ["1-2"], "refresh_steps": [0, 3, 5]}}}
    from delta_cache.schedule import Schedule

    handle = apply_delta_cache(transformer, Schedule.from_dict(schedule))
    before = counter.count
    run(pipe, steps=6)
    stats = handle.stats()
    remove_delta_cache(transformer)
    assert counter.count - before == 48 - 3 * 2 * 2  # 3 reuse steps x 2 branches x 2 blocks skipped
    assert counter.count - before == stats["computed_block_evals"]
    # Counting must be installed first: a second counter would sit outside the cache hooks.
    with pytest.raises(ValueError, match="before any cache"):
        BlockCounter(transformer)


def test_mag_cache_calibration_reads_ratios():
    pipe = tiny_wan_pipeline(num_layers=4)
    pipe.set_progress_bar_config(disable=True)
    ratios = calibrate_mag_ratios(pipe.transformer, 6, lambda: run(pipe, steps=6))
    assert len(ratios) == 6 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert pipe.transformer._cache_config is None  # calibration leaves no cache behind


def test_cache_dit_counts_real_blocks_and_leaves_no_trace():
    pipe = tiny_wan_pipeline(num_layers=10)
    pipe.set_progress_bar_config(disable=True)
    counter = BlockCounter(pipe.transformer)
    reference = run(pipe, steps=12)
    for threshold, computed, same in ((1e6, 8 * 2 * 10 + 4 * 2 * 8, False), (0.0, 12 * 2 * 10, True)):
        # A threshold no change reaches: cache-dit's 8 warm-up steps run all 10 blocks in both branches, the other
        # 4 steps only its first 8 blocks. Threshold 0: every block of every step, the uncached video.
        method, before = CacheDiT(pipe, threshold, 12), counter.count
        method.attach(pipe.transformer)
        try:
            video = run(pipe, steps=12)
        finally:
            method.detach(pipe.transformer)
        assert counter.count - before == computed
        assert np.array_equal(video, reference) == same
    assert np.array_equal(run(pipe, steps=12), reference)  # detached: the pipeline is as it was
    # cache-dit's disable_cache sets the block list back as a new attribute, last among the children; the order
    # is restored (the next test shows why it matters).
    assert list(pipe.transformer._modules) == ["rope", "patch_embedding", "condition_embedder", "blocks", "norm_out",
                                               "proj_out"]


def test_methods_after_cache_dit_see_the_block_lists_in_forward_order():
    """After cache-dit has run, TeaCache and FirstBlockCache still find HunyuanVideo's first block (a double
    block): cache-dit left single_transformer_blocks before transformer_blocks, so both took a single block
    for the first (TeaCache refused it, FirstBlockCache raised a TypeError)."""
    from diffusers import FirstBlockCacheConfig, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    from delta_cache.hooks import model_block_lists
    from delta_cache.models.hunyuan_video.tiny import build_tiny_components
    from delta_cache.teacache import TeaCacheConfig, apply_teacache, remove_teacache

    torch.set_num_threads(1)
    parts = build_tiny_components(num_layers=9, num_single_layers=9)
    parts["transformer"] = parts["transformer"].float()
    pipe = HunyuanVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **parts)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe(prompt="a red square", height=32, width=32, num_frames=5, num_inference_steps=3,
                    generator=torch.Generator().manual_seed(0), output_type="latent").frames

    reference = generate()
    method = CacheDiT(pipe, 0.1, 3)
    method.attach(pipe.transformer)
    try:
        generate()
    finally:
        method.detach(pipe.transformer)
    transformer = pipe.transformer
    assert list(model_block_lists(transformer)) == ["transformer_blocks", "single_transformer_blocks"]
    apply_teacache(transformer, TeaCacheConfig(threshold=0.0, indicator="modulated_input",
                                               coefficients=(0.0, 0.0, 0.0, 1.0, 0.0), num_inference_steps=3))
    try:
        assert torch.equal(generate(), reference)  # threshold 0: every step computed
    finally:
        remove_teacache(transformer)
    transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    try:
        assert torch.equal(generate(), reference)
    finally:
        transformer.disable_cache()


# --- the script ------------------------------------------------------------------------------------------

def test_missing_checkpoint_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--family", "wan", "--wan_ckpt", str(tmp_path / "nope"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--wan_ckpt" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    result = subprocess.run([sys.executable, str(SCRIPT), "--family", "wan", "--wan_ckpt", str(tmp_path),
                             "--num_pairs", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--num_pairs must be >= 1" in result.stderr


def test_summary_leaves_identical_pairs_out_of_the_psnr_mean():
    script = bench_script()
    inf = float("inf")

    def run_(psnr, seconds, computed, agrees):
        return {"denoise_s": seconds, "computed_block_evals": computed, "total_block_evals": 100, "psnr": psnr,
                "ssim": 1.0 if psnr == inf else 0.9, "psnr_mp4": psnr, "ssim_mp4": 0.9, "lpips": None,
                "agrees": agrees}

    settings = {"checkpoint": "c", "width": 8, "height": 8, "num_frames": 1, "steps": 2, "num_pairs": 3,
                "calib_pairs": 1, "threads": 1, "device": "cpu", "torch": "t", "diffusers": "d", "sampling": "s",
                "lpips": "n/a"}
    bench = script.FamilyBench("wan", settings, methods={
        "uncached": {"label": "uncached", "description": "reference", "available": True},
        "first_block_cache": {"label": "FBC", "description": "threshold 0.1", "available": True}})
    bench.pairs = [{"runs": {"uncached": run_(inf, 4.0, 100, True), "first_block_cache": run_(30.0, 2.0, 50, True)}},
                   {"runs": {"uncached": run_(inf, 2.0, 100, False), "first_block_cache": run_(inf, 2.0, 100, False)}},
                   {"runs": {"uncached": run_(inf, 3.0, 100, True), "first_block_cache": run_(40.0, 1.0, 40, False)}}]
    summary = script.summarise(bench, ["uncached", "first_block_cache"])
    fbc = summary["first_block_cache"]
    assert fbc["psnr"] == 35.0 and fbc["psnr_identical_pairs"] == 1
    assert fbc["speedup"] == pytest.approx(3.0 / (5.0 / 3)) and fbc["compute_share"] == pytest.approx(190 / 300)
    assert fbc["prompt_accuracy"] == pytest.approx(1 / 3)
    assert summary["uncached"]["psnr"] == inf and summary["uncached"]["speedup"] == 1.0
    bench.summary = summary
    table = script.markdown([bench])
    assert "| FBC | threshold 0.1 | 63/100 | 63.3% | 1.80x | 35.00 (1 identical) | 0.9333 |" in table
    assert "| uncached | reference | 100/100 | 100.0% | 1.00x | inf | 1.0000 | inf |" in table


@pytest.fixture(scope="module")
def wan_ckpt(tmp_path_factory):
    from delta_cache.models.wan.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-wan", num_layers=40)
    write_native_size(folder, 32, 32, 5)
    return folder


def test_bench_wan_end_to_end(wan_ckpt, tmp_path, capsys):
    out = tmp_path / "bench"
    bench_script().main(["--family", "wan", "--wan_ckpt", str(wan_ckpt), "--num_pairs", "1", "--sample_steps", "12",
                        "--calib_pairs", "1", "--tune_runs", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    for name in ("bench_fidelity.md", "bench_fidelity.json", "bench_fidelity.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "bench_fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".tmp_*"))
    table = (out / "bench_fidelity.md").read_text()
    assert table.strip() in printed
    assert "| uncached | reference | 960/960 | 100.0% | 1.00x | inf | 1.0000 | inf | 1.0000 |" in table
    assert "32x32, 5 frames, 12 steps, N = 1 pairs" in table and "threads 1" in table

    data = json.loads((out / "bench_fidelity.json").read_text())["families"]["wan"]
    pair = data["pairs"][0]
    assert pair["prompt"] == make_video(0, "eval").prompt and pair["seed"] == 0
    runs = pair["runs"]
    assert set(runs) == {"uncached", "delta_cache", "step_skipping", "teacache", "first_block_cache", "mag_cache",
                         "cache_dit"}
    assert runs["uncached"]["computed_block_evals"] == 960 == 40 * 12 * 2  # blocks x steps x branches
    assert runs["uncached"]["psnr"] == "inf" and runs["uncached"]["ssim"] == 1.0
    delta = runs["delta_cache"]
    # The preset at 12 steps reuses on 3 steps its 28 background blocks, in both branches: 960 - 168.
    assert delta["computed_block_evals"] == 792 == delta["cache_reported_computed_block_evals"]
    assert runs["step_skipping"]["computed_block_evals"] == 10 * 2 * 40  # 10 of 12 steps: the closest to 792
    assert runs["step_skipping"]["skipped_calls"] == 2 * 2
    for name in ("delta_cache", "step_skipping"):
        run_ = runs[name]
        assert run_["psnr"] != "inf" and run_["psnr"] > 10 and 0 < run_["ssim"] <= 1 and run_["denoise_s"] > 0
        assert Path(run_["video"]).is_file()
    assert data["methods"]["first_block_cache"]["tuning"]["trials"][0][0] == 0.05
    # TeaCache skips or runs the whole stack per call, first and last step of each branch always computed.
    tea = runs["teacache"]
    assert tea["computed_block_evals"] == 40 * tea["computed_calls"] and tea["computed_calls"] + tea["skipped_calls"] == 24
    assert tea["computed_calls"] >= 4 and len(data["methods"]["teacache"]["teacache_coefficients"]) == 5
    assert len(data["methods"]["mag_cache"]["mag_ratios"]) == 12
    assert 8 * 2 * 40 + 4 * 2 * 8 <= runs["cache_dit"]["computed_block_evals"] <= 960  # 8 warm-up steps, F8
    assert data["summary"]["uncached"]["compute_share"] == 1.0
    assert data["summary"]["delta_cache"]["compute_share"] == pytest.approx(792 / 960)


@pytest.fixture(scope="module")
def hunyuan_ckpt(tmp_path_factory):
    """A 2 + 2 block HunyuanVideo checkpoint at 32x32x5, and a schedule for it at 6 steps."""
    from delta_cache.models.hunyuan_video.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("hunyuan")
    ckpt = write_tiny_checkpoint(root / "tiny-hv", num_layers=2, num_single_layers=2)
    write_native_size(ckpt, 32, 32, 5)
    schedule = root / "schedule.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 6, "block_lists": {
        "transformer_blocks": {"background_blocks": [1], "refresh_steps": [0, 1, 4]},
        "single_transformer_blocks": {"background_blocks": [0, 1], "refresh_steps": [0, 1, 4]}}}))
    return ckpt, schedule


def bench_hunyuan_video(hunyuan_ckpt, out: Path, *extra: str) -> dict:
    """One pair at 6 steps, one calibration pair; the family's json."""
    ckpt, schedule = hunyuan_ckpt
    bench_script().main(["--family", "hunyuan_video", "--hunyuan_ckpt", str(ckpt), "--hunyuan_schedule", str(schedule),
                        "--num_pairs", "1", "--sample_steps", "6", "--calib_pairs", "1", *extra, "--out", str(out)])
    return json.loads((out / "bench_fidelity.json").read_text())["families"]["hunyuan_video"]


def test_bench_hunyuan_video_smoke(hunyuan_ckpt, tmp_path, monkeypatch):
    from delta_cache import baselines

    def no_ratios(*args, **kwargs):
        raise RuntimeError("MagCache calibration printed no ratios\nsecond line")

    monkeypatch.setattr(baselines, "calibrate_mag_ratios", no_ratios)  # a baseline that fails gets a row
    out = tmp_path / "bench"
    data = bench_hunyuan_video(hunyuan_ckpt, out, "--tune_runs", "1")
    runs = data["pairs"][0]["runs"]
    assert runs["uncached"]["computed_block_evals"] == 4 * 6  # one call per step (embedded guidance)
    assert runs["delta_cache"]["computed_block_evals"] == 24 - 3 * 3  # 3 reuse steps x 3 background blocks
    assert runs["step_skipping"]["computed_block_evals"] == 4 * 4  # 15 evaluations -> 4 of 6 steps
    assert set(runs) == {"uncached", "delta_cache", "step_skipping", "teacache", "first_block_cache"}
    assert runs["teacache"]["computed_block_evals"] == 4 * runs["teacache"]["computed_calls"]
    assert data["methods"]["mag_cache"] == {"label": "MagCache (diffusers)", "available": False,
                                            "reason": "RuntimeError: MagCache calibration printed no ratios"}
    # cache-dit always computes its first 8 blocks: this model is too shallow, which is said before cache-dit
    # touches the pipeline (the methods evaluated after it still run: see the runs above).
    assert data["methods"]["cache_dit"]["reason"] == ("ValueError: cache-dit's F8B0 needs more than 8 blocks in each "
                                                      "block list; this model has 2")
    table = (out / "bench_fidelity.md").read_text()
    assert "## hunyuan_video" in table
    row = next(line for line in table.splitlines() if line.startswith("| MagCache"))
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "n/a: RuntimeError: MagCache calibration printed no ratios" in row
    assert row.count("|") == header.count("|")


def test_methods_flag_picks_the_compared_methods(hunyuan_ckpt, tmp_path):
    out = tmp_path / "bench"
    data = bench_hunyuan_video(hunyuan_ckpt, out, "--methods", "step_skipping")
    assert set(data["pairs"][0]["runs"]) == set(data["methods"]) == {"uncached", "delta_cache", "step_skipping"}
    methods_in_table = [line.split(" |")[0] for line in (out / "bench_fidelity.md").read_text().splitlines()
                        if line.startswith("| ") and not line.startswith("| method")]
    assert methods_in_table == ["| uncached", "| delta cache (ours)", "| naive step skipping"]
