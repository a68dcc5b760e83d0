"""Wan2.1/generate.py: upstream command lines on tiny upstream-layout checkpoints, bad input, bit-identity."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from delta_cache.models.wan import tasks
from delta_cache.models.wan.checkpoint import load_wan_components
from delta_cache.models.wan.pipeline import build_pipeline, generate, make_scheduler
from delta_cache.models.wan.tiny import write_tiny_checkpoint
from delta_cache.video import read_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
GENERATE = REPO / "Wan2.1" / "generate.py"


@pytest.fixture(scope="module")
def ckpt4(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("wan4") / "ckpt", num_layers=4)


@pytest.fixture(scope="module")
def ckpt40(tmp_path_factory):
    # One narrow head: 40 blocks x 50 steps x 2 branches over 832x480's 1560 tokens is the suite's costliest run.
    return write_tiny_checkpoint(tmp_path_factory.mktemp("wan40") / "ckpt", num_layers=40, num_heads=1, head_dim=6)


def run_cli(args, cwd, script=GENERATE):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_upstream_command_line_reports_992_of_2000_per_branch(ckpt40, tmp_path):
    # The user's README command (fewer frames for CPU time), from inside Wan2.1/ as users run it.
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = ["--task", "t2v-14B", "--size", "832*480", "--frame_num", "1", "--ckpt_dir", ckpt40,
            "--prompt", "a red square moves left", "--base_seed", "42", "--delta_cache"]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(workdir)}
    proc = subprocess.run([sys.executable, "generate.py", *map(str, args), "--save_file", str(workdir / "out.mp4")],
                          cwd=GENERATE.parent, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cond 992/2000, uncond 992/2000" in proc.stdout
    assert "plans 992/2000 block evaluations per branch at 50 steps" in proc.stderr  # the plan logged before
    assert "ideal speedup 2.02x" in proc.stdout
    assert (workdir / "out.mp4").stat().st_size > 0


def test_default_output_name_and_t2i_png_from_repo_root(ckpt4, tmp_path):
    proc = run_cli(["--task", "t2i-14B", "--size", "1024*1024", "--ckpt_dir", ckpt4, "--sample_steps", "2",
                    "--prompt", "a blue/green circle", "--base_seed", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p.name for p in tmp_path.iterdir()]
    assert len(files) == 1 and re.fullmatch(r"t2i-14B_1024\*1024_1_1_a_blue_green_circle_\d{8}_\d{6}\.png", files[0])
    assert "denoising time:" in proc.stdout and "delta_cache" not in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "t2v-1.3B", "--size", "1280*720"], "size 1280\\*720 is not supported for task t2v-1.3B"),
        (["--frame_num", "6"], "--frame_num must be 4n\\+1"),
        (["--task", "t2v-99B"], "invalid choice: 't2v-99B'"),
        (["--task", "vace-14B", "--size", "832*480"], "not supported yet"),
        (["--offload_model", "maybe"], "expected a boolean"),
        (["--sample_steps", "0"], "--sample_steps must be positive"),
        (["--task", "i2v-14B", "--size", "832*480"], "--image is required"),
        (["--cache_forecast", "cubic"], "invalid choice: 'cubic'"),
        (["--ulysses_size", "2"], "= 2 must equal the number of processes; launch with torchrun --nproc_per_node=2"),
        (["--ring_size", "0"], "--ulysses_size and --ring_size must be >= 1"),
    ],
)
def test_bad_flags_give_one_line(ckpt4, tmp_path, args, message):
    base = ["--size", "832*480", "--frame_num", "1", "--ckpt_dir", ckpt4, "--sample_steps", "2"]
    proc = run_cli(base + args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr
    assert list(tmp_path.iterdir()) == []


def _bad_schedule_cases(tmp_path):
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"format_version": 1, "num_steps": 50, "block_lists": {"blocks": ')
    beyond = tmp_path / "beyond.json"
    beyond.write_text(json.dumps({"format_version": 1, "num_steps": 50, "block_lists": {
        "blocks": {"background_blocks": [1, 9], "refresh_steps": ["0-6"]}}}))
    cubic = tmp_path / "cubic.json"
    cubic.write_text(json.dumps({"format_version": 1, "num_steps": 50, "forecast": "cubic", "block_lists": {
        "blocks": {"background_blocks": [1], "refresh_steps": ["0-6"]}}}))
    return [(malformed, "not valid JSON"), (beyond, "block 9 in 'blocks' is beyond the model's depth"),
            (cubic, "forecast must be one of hold, linear, got 'cubic'"),
            ("wan2.1-t2v-14b", "made for 40 blocks in 'blocks', but this model has 4"),
            ("no-such-preset", "unknown schedule preset")]


def test_bad_schedules_give_one_line(ckpt4, tmp_path):
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    for schedule, message in _bad_schedule_cases(schedules):
        proc = run_cli(["--size", "832*480", "--frame_num", "1", "--ckpt_dir", ckpt4, "--sample_steps", "2",
                        "--cache_schedule", schedule], cwd=workdir)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "| INFO" not in line]
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and list(workdir.iterdir()) == []


def test_cache_forecast_flag_reaches_the_cache(ckpt4, tmp_path, capsys):
    from loguru import logger

    schedule = tmp_path / "every_other.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 6, "block_lists": {
        "blocks": {"num_blocks": 4, "background_blocks": ["0-3"], "refresh_steps": [0, 1, 3, 5]}}}))
    base = ["--size", "832*480", "--frame_num", "1", "--ckpt_dir", ckpt4, "--cache_schedule", schedule]
    generate_py = load_script(GENERATE)  # in this process (the command line itself is tested above)
    videos = {}
    for extra, forecast in (([], "hold"), (["--cache_forecast", "linear"], "linear")):
        messages = []
        sink = logger.add(messages.append, format="{message}")
        try:
            generate_py.main([*map(str, base + extra), "--sample_steps", "6",
                              "--save_file", str(tmp_path / f"{forecast}.mp4")])
        finally:
            logger.remove(sink)
        # the plan logged before sampling is what the cache then counts
        assert (f"delta cache: schedule 'every_other' (made for 6 steps), forecast {forecast}: plans 16/24 block "
                f"evaluations per branch at 6 steps, ideal speedup 1.50x\n") in messages
        assert "cond 16/24, uncond 16/24" in capsys.readouterr().out
        videos[forecast] = read_video(tmp_path / f"{forecast}.mp4")
    assert not np.array_equal(videos["hold"], videos["linear"])  # step 4 reuses the line through steps 1, 3
    # At 2 steps each run step holds a refresh of the 6-step schedule: nothing is reused, and the run says so.
    messages = []
    sink = logger.add(messages.append, format="{level} {message}")
    try:
        generate_py.main([*map(str, base), "--sample_steps", "2", "--save_file", str(tmp_path / "two.mp4")])
    finally:
        logger.remove(sink)
    assert "cond 8/8, uncond 8/8" in capsys.readouterr().out
    warnings = [m for m in messages if m.startswith("WARNING")]
    assert len(warnings) == 1 and "schedule 'every_other' reuses no block at 2 steps" in warnings[0], messages


def test_missing_checkpoint_file_gives_one_line(ckpt4, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in ckpt4.iterdir():
        if item.name != "Wan2.1_VAE.pth":
            (broken / item.name).symlink_to(item)
    proc = run_cli(["--size", "832*480", "--frame_num", "1", "--ckpt_dir", broken], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Wan2.1_VAE.pth" in proc.stderr.strip().splitlines()[-1]
    proc = run_cli(["--size", "832*480", "--ckpt_dir", tmp_path / "nowhere"], cwd=tmp_path)
    assert proc.returncode == 2 and "no such folder" in proc.stderr


def test_cache_off_is_bit_identical_to_plain_diffusers(ckpt4):
    components = load_wan_components(ckpt4, task="t2v-14B")
    pipe = build_pipeline(components, image_to_video=False, solver="unipc", shift=5.0)
    pipe.set_progress_bar_config(disable=True)
    ours = generate(pipe, prompt="a cat moves right", negative_prompt=tasks.NEGATIVE_PROMPT, width=64, height=48,
                    num_frames=5, num_inference_steps=6, guidance_scale=5.0, seed=3)
    plain = pipe(prompt="a cat moves right", negative_prompt=tasks.NEGATIVE_PROMPT, width=64, height=48, num_frames=5,
                 num_inference_steps=6, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(3),
                 output_type="np").frames[0]
    np.testing.assert_array_equal(ours.frames, plain)
    assert ours.frames.shape == (5, 48, 64, 3) and ours.denoise_seconds > 0


def test_sampler_grids_match_upstream():
    unipc = make_scheduler("unipc", 5.0)
    unipc.set_timesteps(50)
    assert float(unipc.sigmas[0]) == pytest.approx(5 * 0.999 / (1 + 4 * 0.999), abs=1e-6)  # 0.99980
    assert float(unipc.sigmas[-1]) == 0.0 and len(unipc.timesteps) == 50 and int(unipc.timesteps[0]) == 999
    dpm = make_scheduler("dpm++", 3.0)
    dpm.set_timesteps(10)
    assert float(dpm.sigmas[0]) == 1.0 and float(dpm.sigmas[-1]) == 0.0
    assert float(dpm.sigmas[5]) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    assert tasks.task_defaults("i2v-14B", "832*480") == tasks.TaskDefaults(81, 40, 3.0)
    assert tasks.task_defaults("t2i-14B", "1024*1024") == tasks.TaskDefaults(1, 50, 5.0)


def _frames(ckpt, **overrides):
    components = load_wan_components(ckpt, task=overrides.pop("task", "t2v-14B"))
    pipe = build_pipeline(components, image_to_video="image" in overrides, solver=overrides.pop("solver", "unipc"),
                          shift=5.0)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a dog moves up", negative_prompt=tasks.NEGATIVE_PROMPT, width=64, height=48, num_frames=5,
                  num_inference_steps=4, guidance_scale=5.0, seed=7)
    kwargs.update(overrides)
    return generate(pipe, **kwargs).frames


def test_upstream_and_diffusers_layouts_give_the_same_video(tmp_path):
    upstream = write_tiny_checkpoint(tmp_path / "up", num_layers=3, seed=5, shards=2)
    diffusers_layout = write_tiny_checkpoint(tmp_path / "df", num_layers=3, seed=5, layout="diffusers")
    for solver in ("unipc", "dpm++"):
        a = (_frames(upstream, solver=solver) * 255).round()
        b = (_frames(diffusers_layout, solver=solver) * 255).round()
        np.testing.assert_array_equal(a, b)


def test_i2v_from_an_upstream_folder(tmp_path):
    # the upstream layout: Wan's CLIP .pth converts to transformers' CLIPVisionModel (the diffusers layout's
    # image encoder is covered by test_wan_checkpoint's layout-equivalence test)
    from PIL import Image

    ckpt = write_tiny_checkpoint(tmp_path / "i2v", num_layers=2, i2v=True)
    image = tmp_path / "input.png"
    Image.fromarray(np.full((96, 128, 3), (200, 30, 30), dtype=np.uint8)).save(image)
    schedule = tmp_path / "two_blocks.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 2, "background_blocks": [1], "refresh_steps": [0, 1]}}}))
    proc = run_cli(["--task", "i2v-14B", "--size", "832*480", "--frame_num", "5", "--ckpt_dir", ckpt, "--image", image,
                    "--sample_steps", "4", "--save_file", tmp_path / "i2v.mp4", "--cache_schedule", schedule],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 4 steps x 2 branches x 2 blocks = 16; block 1 skipped on steps 2 and 3 of both branches
    assert "computed 12/16 block evaluations" in proc.stdout and (tmp_path / "i2v.mp4").stat().st_size > 0
    # i2v keeps the image's aspect ratio (4:3) at the area of 832*480
    assert tasks.i2v_output_size("832*480", 128, 96) == (720, 544)


def test_tiny_trained_checkpoint_runs_at_its_native_size_by_default(ckpt4, tmp_path):
    # tiny_model.json (written by scripts/train_tiny.py) adds its native size and makes it the default.
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for item in ckpt4.iterdir():
        (tiny / item.name).symlink_to(item)
    (tiny / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 48, "height": 32, "num_frames": 5}}))
    out = tmp_path / "out.mp4"
    proc = run_cli(["--ckpt_dir", tiny, "--sample_steps", "2", "--save_file", out], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_video(out).shape == (5, 32, 48, 3)
    # Without the file that size is refused, with one line naming the supported sizes.
    proc = run_cli(["--ckpt_dir", ckpt4, "--size", "48*32", "--frame_num", "5"], cwd=tmp_path)
    assert proc.returncode == 2 and "size 48*32 is not supported for task t2v-14B" in proc.stderr
    # A malformed file is one line naming it.
    (tiny / "tiny_model.json").unlink()
    (tiny / "tiny_model.json").write_text('{"native_size": {"width": 48}}')
    proc = run_cli(["--ckpt_dir", tiny, "--sample_steps", "2"], cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "tiny_model.json: malformed" in lines[0], proc.stderr
