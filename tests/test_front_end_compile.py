"""--compile in both front ends: diffusers' regional compilation, applied after the cache's hooks (the order
users get wrong). Dynamo traces with its eager backend here: the wiring and the tracing are what is tested;
compiled numerics against eager are tested in test_delta_cache.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ModelMixin

from delta_cache.models.hunyuan_video.checkpoint import DIT_WEIGHT
from delta_cache.models.hunyuan_video.tiny import write_tiny_checkpoint as write_tiny_hunyuan_checkpoint
from delta_cache.models.wan.tiny import write_tiny_checkpoint
from delta_cache.video import read_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def compiled(monkeypatch):
    """Records each compile_repeated_blocks call (with whether the delta cache was attached by then) and
    compiles with dynamo's eager backend."""
    calls = []
    original = ModelMixin.compile_repeated_blocks

    def recording(self, *args, **kwargs):
        calls.append(hasattr(self, "_delta_cache_handle"))
        return original(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(ModelMixin, "compile_repeated_blocks", recording)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def test_wan_compiles_after_the_cache_and_gives_the_eager_video(compiled, tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "wan", num_layers=2)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    schedule = tmp_path / "two_blocks.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 2, "background_blocks": [1], "refresh_steps": [0, 1]}}}))
    generate_py = load_script(REPO / "Wan2.1" / "generate.py")
    base = ["--task", "t2v-1.3B", "--ckpt_dir", str(ckpt), "--sample_steps", "4", "--base_seed", "2",
            "--cache_schedule", str(schedule)]
    generate_py.main(base + ["--save_file", str(tmp_path / "eager.mp4")])
    generate_py.main(base + ["--compile", "--save_file", str(tmp_path / "compiled.mp4")])
    assert compiled == [True]  # once, with the cache already attached
    assert capsys.readouterr().out.count("computed 12/16 block evaluations") == 2
    np.testing.assert_array_equal(read_video(tmp_path / "compiled.mp4"), read_video(tmp_path / "eager.mp4"))


def test_hunyuan_video_compiles_after_the_cache(compiled, tmp_path, monkeypatch):
    ckpt = write_tiny_hunyuan_checkpoint(tmp_path / "ckpts", num_layers=1, num_single_layers=2, seed=1)
    monkeypatch.setenv("MODEL_BASE", str(ckpt))
    load_script(REPO / "HunyuanVideo" / "sample_video.py").main(list(map(str, [
        "--model-base", ckpt, "--dit-weight", ckpt / DIT_WEIGHT, "--video-size", "32", "32", "--video-length", "5",
        "--infer-steps", "3", "--prompt", "a red square", "--flow-reverse", "--seed", "3", "--delta_cache",
        "--cache_schedule", _hunyuan_schedule(tmp_path), "--compile", "--save-path", tmp_path / "out"])))
    assert compiled == [True]
    assert len(list((tmp_path / "out").iterdir())) == 1


def _hunyuan_schedule(tmp_path):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"format_version": 1, "num_steps": 3, "block_lists": {
        "transformer_blocks": {"num_blocks": 1, "background_blocks": [0], "refresh_steps": [0]},
        "single_transformer_blocks": {"num_blocks": 2, "background_blocks": [1], "refresh_steps": [0]}}}))
    return path
