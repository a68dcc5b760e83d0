"""The committed tiny trained models: they load through the front ends, sample deterministically, and draw
what the prompt asks for often enough (a lenient version of scripts/check_quality.py's bar)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from delta_cache.errors import UserInputError
from delta_cache.models.tiny_info import NativeSize, committed_checkpoint, native_size, resolve_video_size
from delta_cache.video import read_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
WAN_CKPT = REPO / "checkpoints" / "tiny-wan2.1-t2v"
HUNYUAN_CKPT = REPO / "checkpoints" / "tiny-hunyuanvideo-t2v"
HUNYUAN_DIT = HUNYUAN_CKPT / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
PROMPT = "a yellow square moves right slowly on a black background"


def run(script, args, cwd, **extra_env):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd), "PYTHONPATH": str(REPO), **extra_env}
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_committed_checkpoints_are_small_and_describe_themselves():
    files = [p for p in (REPO / "checkpoints").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    size = native_size(WAN_CKPT)
    assert (size.width, size.height, size.num_frames) == (128, 128, 17)
    info = json.loads((WAN_CKPT / "tiny_model.json").read_text())
    assert info["family"] == "wan" and info["recipe"]["num_layers"] == 40
    assert native_size(HUNYUAN_CKPT) == NativeSize(128, 128, 17)
    info = json.loads((HUNYUAN_CKPT / "tiny_model.json").read_text())
    assert info["family"] == "hunyuan_video"
    assert (info["recipe"]["num_layers"], info["recipe"]["num_single_layers"]) == (20, 40)  # the real depths
    # the scripts' default checkpoints are these folders, from any working directory
    assert (committed_checkpoint("wan"), committed_checkpoint("hunyuan_video")) == (WAN_CKPT, HUNYUAN_CKPT)


def test_tools_resolve_the_video_size_from_flags_native_size_or_default(tmp_path):
    real = tmp_path / "real"  # a checkpoint without tiny_model.json
    real.mkdir()
    with pytest.raises(UserInputError, match="no tiny_model.json"):
        resolve_video_size(real, None, None)
    with pytest.raises(UserInputError, match="give --frame_num"):
        resolve_video_size(real, "64*48", None)
    assert resolve_video_size(real, "64*48", 9) == NativeSize(64, 48, 9)
    upstream = NativeSize(832, 480, 81)
    assert resolve_video_size(real, None, None, default=upstream) == upstream
    assert resolve_video_size(real, "1280*720", None, default=upstream) == NativeSize(1280, 720, 81)
    # a tiny checkpoint: its native size, and its frame count only at that size
    assert resolve_video_size(WAN_CKPT, None, None, default=upstream) == NativeSize(128, 128, 17)
    assert resolve_video_size(WAN_CKPT, "128*128", None) == NativeSize(128, 128, 17)
    assert resolve_video_size(WAN_CKPT, "64*64", None, default=upstream) == NativeSize(64, 64, 81)
    with pytest.raises(UserInputError, match="not the checkpoint's native size"):
        resolve_video_size(WAN_CKPT, "64*64", None)
    for size, frames, message in (("64x64", 9, "WIDTH\\*HEIGHT"), ("60*64", 9, "multiples of 16"),
                                  ("64*64", 8, "4n\\+1"), ("0*64", 9, "positive")):
        with pytest.raises(UserInputError, match=message):
            resolve_video_size(WAN_CKPT, size, frames)


def test_front_ends_default_to_the_committed_models_native_size_and_frames(monkeypatch):
    # Only the flags are resolved here (no loading): the generation tests below run 5 of the 17 frames.
    generate = load_script(REPO / "Wan2.1" / "generate.py")
    args = generate.build_parser().parse_args(["--ckpt_dir", str(WAN_CKPT), "--prompt", PROMPT])
    generate.validate(args)
    assert (args.size, args.frame_num) == ("128*128", 17)
    monkeypatch.setenv("MODEL_BASE", str(HUNYUAN_CKPT))
    sample_video = load_script(REPO / "HunyuanVideo" / "sample_video.py")
    args = sample_video.build_parser().parse_args(["--model-base", str(HUNYUAN_CKPT), "--prompt", PROMPT])
    sample_video.validate(args)
    assert (args.video_size, args.video_length) == ([128, 128], 17)


def test_wan_tiny_model_through_generate_py_is_deterministic(tmp_path, monkeypatch):
    # The command line in a fresh process, then the same arguments in this one: the same video. (5 of the 17
    # native frames keep it short; the native width and height are still the default.)
    args = ["--ckpt_dir", WAN_CKPT, "--prompt", PROMPT, "--base_seed", "7", "--sample_steps", "8", "--frame_num", "5",
            "--save_file"]
    proc = run(REPO / "Wan2.1" / "generate.py", [*args, tmp_path / "a.mp4"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.chdir(tmp_path)
    load_script(REPO / "Wan2.1" / "generate.py").main([*map(str, args), str(tmp_path / "b.mp4")])
    outputs = [read_video(tmp_path / name) for name in ("a.mp4", "b.mp4")]
    assert outputs[0].shape == (5, 128, 128, 3)  # the native width and height are the default
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert outputs[0].std() > 5  # not a flat frame


def test_hunyuan_video_tiny_model_through_sample_video_py_is_deterministic(tmp_path, monkeypatch):
    # The command line in a fresh process, then the same arguments in this one: the same video (5 frames, as above).
    args = ["--model-base", HUNYUAN_CKPT, "--dit-weight", HUNYUAN_DIT, "--prompt", PROMPT, "--seed", "7",
            "--infer-steps", "8", "--video-length", "5", "--flow-reverse", "--save-path"]
    proc = run(REPO / "HunyuanVideo" / "sample_video.py", [*args, tmp_path / "a"], tmp_path,
               MODEL_BASE=str(HUNYUAN_CKPT))  # upstream reads the VAE and text encoders from $MODEL_BASE
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_BASE", str(HUNYUAN_CKPT))
    load_script(REPO / "HunyuanVideo" / "sample_video.py").main([*map(str, args), str(tmp_path / "b")])
    outputs = [read_video(next((tmp_path / name).glob("*.mp4"))) for name in ("a", "b")]
    assert outputs[0].shape == (5, 128, 128, 3)  # the native width and height are the default
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert outputs[0].std() > 5  # not a flat frame


def _check_quality():
    return load_script(REPO / "scripts" / "check_quality.py")


# Lenient lower bounds on the background share for the committed models: both get it right on all 40 pairs
# (docs/tiny-models.md). Raise them when weights that pass the bar replace them. (One pair each at the default
# 50 steps, about 40 s: the suite stays under 10 minutes.)
@pytest.mark.parametrize("family, ckpt, pairs, background",
                         [("wan", WAN_CKPT, 1, 1.0), ("hunyuan_video", HUNYUAN_CKPT, 1, 1.0)])
def test_quality_bar_lenient(family, ckpt, pairs, background, tmp_path):
    # Held-out prompts at the default 50 steps; the full bar (40 pairs) is scripts/check_quality.py.
    summary = _check_quality().main(["--family", family, "--ckpt_dir", str(ckpt), "--num_pairs", str(pairs),
                                     "--out", str(tmp_path)])
    assert summary["attributes"]["background"] >= background
    assert (tmp_path / f"quality_{family}.json").is_file()
