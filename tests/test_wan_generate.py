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
    # One narrow head and a tiny native size (a size tiny checkpoints accept besides upstream's): 40 blocks x 50
    # steps x 2 branches over 832x480's 1560 tokens took 48 s; the upstream sizes run in the t2i test below.
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("wan40") / "ckpt", num_layers=40, num_heads=1, head_dim=6)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    return ckpt


def run_cli(args, cwd, script=GENERATE):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_upstream_command_line_reports_992_of_2000_per_branch(ckpt40, tmp_path):
    # The user's README command (a tiny size and fewer frames for CPU time), from inside Wan2.1/ as users run it.
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = ["--task", "t2v-14B", "--size", "64*48", "--frame_num", "1", "--ckpt_dir", ckpt40,
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
        (["--frame_num", "0"], "--frame_num must be at least 1"),
        (["--save_file", "."], "--save_file . is a folder; give a file name"),
        (["--task", "t2v-99B"], "invalid choice: 't2v-99B'"),
        (["--task", "vace-14B", "--src_mask", "mask.mp4"], "--src_mask needs --src_video"),
        (["--offload_model", "maybe"], "expected a boolean"),
        (["--sample_steps", "0"], "--sample_steps must be positive"),
        (["--task", "i2v-14B", "--size", "832*480"], "--image is required"),
        (["--cache_forecast", "cubic"], "invalid choice: 'cubic'"),
        (["--ulysses_size", "2"], "= 2 must equal the number of processes; launch with torchrun --nproc_per_node=2"),
        (["--ring_size", "0"], "--ulysses_size and --ring_size must be >= 1"),
        # found by a new user's walkthrough: each ran the whole generation (NaN: a black video) or failed after it
        (["--sample_guide_scale", "nan"], "--sample_guide_scale: must be a finite number at least 0, got nan"),
        (["--sample_shift", "inf"], "--sample_shift: must be a finite number above 0, got inf"),
        (["--save_file", "out.txt"], "--save_file out.txt: the file name must end in .mp4, .mkv, .mov, .avi"),
        (["--task", "t2i-14B", "--save_file", "out.mp4"], "the file name must end in .png, .jpg, .jpeg"),
        (["--base_seed", "99999999999999999999"], "--base_seed 99999999999999999999 is out of range"),
        (["--cache_schedule", ""], "--cache_schedule: expected a name or a path, got an empty value"),
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


def test_bad_schedules_give_one_line(ckpt4, tmp_path, monkeypatch):
    from delta_cache.errors import UserInputError

    schedules = tmp_path / "schedules"
    schedules.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    (first, first_message), *others = _bad_schedule_cases(schedules)
    base = ["--size", "832*480", "--frame_num", "1", "--ckpt_dir", ckpt4, "--sample_steps", "2", "--cache_schedule"]
    # the command line: one line, exit code 2, no traceback, no file
    proc = run_cli([*base, first], cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "| INFO" not in line]
    assert len(lines) == 1 and first_message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and list(workdir.iterdir()) == []
    # the other cases in this process: the same one-line error (run_cli prints it), no file written, and all
    # before the weights load (the depth comes from config.json: a real model's load takes minutes)
    from delta_cache.models.wan import checkpoint

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the schedule was checked")

    monkeypatch.setattr(checkpoint, "load_wan_components", no_loading)
    generate_py = load_script(GENERATE)
    monkeypatch.chdir(workdir)
    diffusers_ckpt = write_tiny_checkpoint(tmp_path / "diffusers", num_layers=3, layout="diffusers")
    for schedule, message, ckpt in [*((s, m, ckpt4) for s, m in others),
                                    ("wan2.1-t2v-14b", "made for 40 blocks in 'blocks', but this model has 3",
                                     diffusers_ckpt),
                                    ("hunyuanvideo-720p", "names block list 'transformer_blocks', which this model "
                                                          "does not have (it has: blocks)", ckpt4)]:
        with pytest.raises(UserInputError) as raised:
            generate_py.main([*map(str, base[:5]), str(ckpt), *map(str, base[6:]), str(schedule)])
        assert message in str(raised.value) and "\n" not in str(raised.value)
        assert list(workdir.iterdir()) == []


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
    # An image given to a text task is ignored, as upstream does, with a warning (never read: it is empty).
    (tmp_path / "unused.png").write_bytes(b"")
    messages = []
    sink = logger.add(messages.append, format="{level} {message}")
    try:
        generate_py.main([*map(str, base), "--sample_steps", "2", "--save_file", str(tmp_path / "two.mp4"),
                          "--image", str(tmp_path / "unused.png")])
    finally:
        logger.remove(sink)
    assert "cond 8/8, uncond 8/8" in capsys.readouterr().out
    warnings = [m for m in messages if m.startswith("WARNING")]
    assert len(warnings) == 2 and "schedule 'every_other' reuses no block at 2 steps" in warnings[1], messages
    assert warnings[0].startswith("WARNING --image ignored: task t2v-14B takes no image"), messages


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


def test_image_tasks_cache_off_are_bit_identical_to_plain_diffusers(tmp_path):
    # flf2v (and with it i2v's path): our prompt encoding and CPU-drawn noise feed WanImageToVideoPipeline the
    # same inputs as calling it directly with the first and last frames.
    from PIL import Image

    ckpt = write_tiny_checkpoint(tmp_path / "flf2v", num_layers=2, flf2v=True)
    components = load_wan_components(ckpt, task="flf2v-14B")
    pipe = build_pipeline(components, image_to_video=True, solver="unipc", shift=16.0)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    first, last = (Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(2))
    inputs = dict(negative_prompt=tasks.negative_prompt("flf2v-14B"), width=64, height=48, num_frames=5,
                  num_inference_steps=4, guidance_scale=5.0)
    ours = generate(pipe, prompt="a cat moves right", seed=3, image=first, last_image=last, **inputs)
    plain = pipe(prompt="a cat moves right", image=first, last_image=last, output_type="np",
                 generator=torch.Generator("cpu").manual_seed(3), **inputs).frames[0]
    np.testing.assert_array_equal(ours.frames, plain)
    assert ours.frames.shape == (5, 48, 64, 3)


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


def _save_image(path, height, width, box, colour):
    from PIL import Image

    pixels = np.full((height, width, 3), 90, dtype=np.uint8)
    top, left, bottom, right = box
    pixels[top:bottom, left:right] = colour
    Image.fromarray(pixels).save(path)
    return path


def test_i2v_from_an_upstream_folder(tmp_path, capsys):
    # the upstream layout: Wan's CLIP .pth converts to transformers' CLIPVisionModel (the diffusers layout's
    # image encoder is covered by test_wan_checkpoint's layout-equivalence test). In-process (the command line
    # itself is tested above), at a tiny_model.json native size: the area of 64*48, the image's aspect ratio.
    ckpt = write_tiny_checkpoint(tmp_path / "i2v", num_layers=2, i2v=True)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    image = _save_image(tmp_path / "input.png", 64, 128, (10, 20, 40, 60), (200, 30, 30))
    schedule = tmp_path / "two_blocks.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 2, "background_blocks": [1], "refresh_steps": [0, 1]}}}))
    load_script(GENERATE).main([*map(str, ["--task", "i2v-14B", "--ckpt_dir", ckpt, "--image", image,
                                           "--sample_steps", "4", "--save_file", tmp_path / "i2v.mp4",
                                           "--cache_schedule", schedule])])
    # 4 steps x 2 branches x 2 blocks = 16; block 1 skipped on steps 2 and 3 of both branches
    assert "computed 12/16 block evaluations" in capsys.readouterr().out
    # a 2:1 image at the area of 64*48 (sqrt(3072 * 2) = 78.4 by 39.2): 64x32, sides rounded down to 16s
    assert read_video(tmp_path / "i2v.mp4").shape == (5, 32, 64, 3)
    # i2v keeps the image's aspect ratio (4:3) at the area of 832*480
    assert tasks.i2v_output_size("832*480", 128, 96) == (720, 544)


def test_image_conditioned_output_size_rounds_down_as_upstream():
    # upstream: latent side = sqrt(area * aspect) // vae stride // patch * patch, pixels = latent side * stride
    for size, image_width, image_height in [("1280*720", 1000, 321), ("832*480", 128, 96), ("1280*720", 333, 500),
                                            ("480*832", 720, 1280), ("832*480", 641, 479)]:
        width, height = (int(v) for v in size.split("*"))
        aspect = image_height / image_width
        latent_h = int(np.sqrt(width * height * aspect) // 8 // 2 * 2)
        latent_w = int(np.sqrt(width * height / aspect) // 8 // 2 * 2)
        assert tasks.i2v_output_size(size, image_width, image_height) == (latent_w * 8, latent_h * 8)
    # a case where rounding the side first (sqrt = 543.9) would give 544 instead of upstream's 528
    assert tasks.i2v_output_size("1280*720", 1000, 321)[1] == 528


def test_sizes_and_frame_counts_upstream_accepts(ckpt4):
    # upstream's SUPPORTED_SIZES (wan/configs/__init__.py)
    video = {"720*1280", "1280*720", "480*832", "832*480"}
    upstream = {"t2v-14B": video, "t2v-1.3B": {"480*832", "832*480"}, "i2v-14B": video, "flf2v-14B": video,
                "t2i-14B": video | {"1024*1024"}, "vace-1.3B": {"480*832", "832*480"}, "vace-14B": video}
    assert {task: set(sizes) for task, sizes in tasks.SUPPORTED_SIZES.items()} == upstream
    generate_py = load_script(GENERATE)
    for frame_num, frames in [("81", 81), ("80", 77), ("6", 5), ("2", 1)]:
        # upstream makes (frame_num - 1) // 4 + 1 latent frames of any count: the 4n+1 frames at or below it
        args = generate_py.build_parser().parse_args(["--ckpt_dir", str(ckpt4), "--frame_num", frame_num])
        generate_py.validate(args)
        assert args.frame_num == frames


def test_flf2v_negative_prompt_and_defaults():
    assert tasks.negative_prompt("flf2v-14B") == "镜头切换，镜头晃动，" + tasks.NEGATIVE_PROMPT
    assert tasks.negative_prompt("i2v-14B") == "镜头晃动，" + tasks.NEGATIVE_PROMPT
    assert tasks.task_defaults("flf2v-14B", "1280*720") == tasks.TaskDefaults(81, 50, 16.0)
    assert tasks.DEFAULT_PRESETS["flf2v-14B"] == "wan2.1-t2v-14b"


def test_flf2v_from_an_upstream_folder(tmp_path, capsys):
    # In-process (the command line itself is tested above). A tiny_model.json native size keeps it small:
    # the area of 64*48, the aspect ratio of the first frame.
    ckpt = write_tiny_checkpoint(tmp_path / "flf2v", num_layers=2, flf2v=True)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    first = _save_image(tmp_path / "first.png", 96, 128, (20, 30, 60, 80), (220, 40, 40))
    # another size: scaled to cover the first frame's 4:3 and centre-cropped, as upstream
    last_a = _save_image(tmp_path / "last_a.png", 150, 150, (80, 80, 140, 140), (40, 220, 40))
    last_b = _save_image(tmp_path / "last_b.png", 150, 150, (10, 10, 70, 70), (40, 40, 220))
    schedule = tmp_path / "two_blocks.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 2, "background_blocks": [1], "refresh_steps": [0, 1]}}}))
    generate_py = load_script(GENERATE)
    videos = []
    for name, last in (("a", last_a), ("b", last_b)):
        out = tmp_path / f"{name}.mp4"
        # The flf2v transformer's image embedding views its input as two frames' CLIP tokens: a run that
        # passed one image would fail there.
        generate_py.main([*map(str, ["--task", "flf2v-14B", "--ckpt_dir", ckpt, "--first_frame", first,
                                     "--last_frame", last, "--sample_steps", "4", "--base_seed", "3",
                                     "--cache_schedule", schedule, "--save_file", out])])
        assert "computed 12/16 block evaluations" in capsys.readouterr().out
        videos.append(read_video(out).astype(float))
    assert videos[0].shape == (5, 48, 64, 3)
    # the last frame conditions the video: the two runs differ, more at the end than at the shared first frame
    differences = [np.abs(videos[0][i] - videos[1][i]).mean() for i in range(5)]
    assert differences[-1] > 1 and differences[-1] > differences[0], differences


def test_flf2v_input_errors(ckpt4, tmp_path):
    from delta_cache.errors import UserInputError

    generate_py = load_script(GENERATE)
    frame = _save_image(tmp_path / "frame.png", 32, 32, (0, 0, 8, 8), (255, 0, 0))
    base = ["--task", "flf2v-14B", "--size", "1280*720", "--frame_num", "5", "--ckpt_dir", str(ckpt4)]
    with pytest.raises(UserInputError, match="--first_frame and --last_frame are both required for task flf2v-14B"):
        generate_py.main(base + ["--first_frame", str(frame)])
    with pytest.raises(UserInputError, match="--last_frame .*nope.png: no such file"):
        generate_py.main(base + ["--first_frame", str(frame), "--last_frame", str(tmp_path / "nope.png")])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    # before the checkpoint is loaded (ckpt4 is a text-to-video checkpoint: loading it would fail differently)
    with pytest.raises(UserInputError, match="--last_frame .*garbage.png: not a readable image"):
        generate_py.main(base + ["--first_frame", str(frame), "--last_frame", str(garbage)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.png", "garbage.png"]


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


def test_t2i_on_a_checkpoint_with_a_native_video_length_makes_one_frame(ckpt40, tmp_path, capsys):
    # The native frame count (5) is a video's; t2i takes one frame without being told (it said
    # "--frame_num must be 1 for task t2i-14B, got 5"). The image is written by its suffix.
    generate_py = load_script(GENERATE)
    generate_py.main(["--task", "t2i-14B", "--ckpt_dir", str(ckpt40), "--sample_steps", "2", "--size", "64*48",
                      "--save_file", str(tmp_path / "image.jpg")])
    assert f"Saving generated image to {tmp_path / 'image.jpg'}" in capsys.readouterr().out  # upstream's line
    from PIL import Image

    with Image.open(tmp_path / "image.jpg") as image:
        assert image.format == "JPEG" and image.size == (64, 48)


def test_t5_cpu_with_model_offload_keeps_t5_on_the_cpu():
    """--t5_cpu on one GPU (model CPU offload on): diffusers hooks every model of the offload sequence, T5 too, so
    its hook must come off; the pipeline still runs on the GPU, and no other pipeline's exclusions change. (Hooks
    are placed without touching the device, so this runs without a GPU.)"""
    import torch
    from diffusers import DiffusionPipeline

    import tiny_wan
    from delta_cache.models.wan.pipeline import place_pipeline

    pipe = tiny_wan.tiny_wan_pipeline(num_layers=2)
    place_pipeline(pipe, torch.device("cuda"), offload=True, text_encoder_on_cpu=True)
    assert not hasattr(pipe.text_encoder, "_hf_hook") and hasattr(pipe.transformer, "_hf_hook")
    assert pipe._execution_device == torch.device("cuda:0")
    assert all(p.device.type == "cpu" for p in pipe.text_encoder.parameters())
    assert DiffusionPipeline._exclude_from_cpu_offload == []
    pipe.maybe_free_model_hooks()  # (what the pipeline calls at the end of each run: it offloads anew)
    assert not hasattr(pipe.text_encoder, "_hf_hook") and hasattr(pipe.transformer, "_hf_hook")
    assert all(p.device.type == "cpu" for p in pipe.text_encoder.parameters())
    other = tiny_wan.tiny_wan_pipeline(num_layers=2)
    place_pipeline(other, torch.device("cuda"), offload=True, text_encoder_on_cpu=False)
    assert other.text_encoder._hf_hook.execution_device == torch.device("cuda:0")
