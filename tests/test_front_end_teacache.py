"""--teacache_thresh in both front ends: TeaCache with its published coefficients on the same command line
as the delta cache (for the paper's comparison rows). Block calls are counted where the blocks run."""

import json
from pathlib import Path

import pytest
from diffusers.models.transformers.transformer_hunyuan_video import (HunyuanVideoSingleTransformerBlock,
                                                                     HunyuanVideoTransformerBlock)
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from delta_cache.errors import UserInputError
from delta_cache.models.hunyuan_video.checkpoint import DIT_WEIGHT
from delta_cache.models.hunyuan_video.tiny import write_tiny_checkpoint as write_tiny_hunyuan_checkpoint
from delta_cache.models.wan.tiny import write_tiny_checkpoint
from block_calls import count_block_calls
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
GENERATE = REPO / "Wan2.1" / "generate.py"
SAMPLE_VIDEO = REPO / "HunyuanVideo" / "sample_video.py"


@pytest.fixture(scope="module")
def wan_ckpt(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("wan") / "ckpt", num_layers=3)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    return ckpt


@pytest.mark.parametrize("threshold, ret_steps, computed_steps", [
    (1e6, False, [0, 7]),  # everything reusable is reused: the first and the last step run
    (1e6, True, [0, 1, 2, 3, 4]),  # ret_steps mode: the first 5 steps always run, the last only when due
    (1e-9, False, list(range(8))),  # a threshold no change stays under: every step runs
])
def test_wan_teacache_skips_whole_calls(wan_ckpt, tmp_path, capsys, monkeypatch, threshold, ret_steps, computed_steps):
    calls = count_block_calls(monkeypatch, blocks=WanTransformerBlock)
    load_script(GENERATE).main([
        "--task", "t2v-1.3B", "--ckpt_dir", str(wan_ckpt), "--sample_steps", "8", "--base_seed", "1",
        "--teacache_thresh", str(threshold), *(["--use_ret_steps"] if ret_steps else []),
        "--save_file", str(tmp_path / "tea.mp4")])
    computed = 2 * len(computed_steps)  # both CFG branches
    assert calls["blocks"] == computed * 3
    assert f"teacache: computed {computed}/16 transformer calls | ideal speedup {16 / computed:.2f}x" in capsys.readouterr().out
    assert (tmp_path / "tea.mp4").is_file()


def test_hunyuan_video_teacache_skips_whole_calls(tmp_path, capsys, monkeypatch):
    ckpt = write_tiny_hunyuan_checkpoint(tmp_path / "ckpts", num_layers=2, num_single_layers=3, seed=1)
    calls = count_block_calls(monkeypatch, blocks=(HunyuanVideoTransformerBlock, HunyuanVideoSingleTransformerBlock))
    monkeypatch.setenv("MODEL_BASE", str(ckpt))
    load_script(SAMPLE_VIDEO).main(list(map(str, [
        "--model-base", ckpt, "--dit-weight", ckpt / DIT_WEIGHT, "--video-size", "32", "32", "--video-length", "5",
        "--infer-steps", "5", "--prompt", "a red square", "--flow-reverse", "--seed", "3", "--teacache_thresh", "1e6",
        "--save-path", tmp_path / "out"])))
    # one call per step (embedded guidance): steps 0 and 4 run all 5 blocks
    assert calls["blocks"] == 2 * 5
    assert "teacache: computed 2/5 transformer calls | ideal speedup 2.50x" in capsys.readouterr().out


def test_teacache_flag_errors(wan_ckpt):
    generate_py = load_script(GENERATE)
    base = ["--ckpt_dir", str(wan_ckpt), "--sample_steps", "2"]
    cases = [
        (["--teacache_thresh", "0.2", "--delta_cache"], "runs TeaCache instead of the delta cache"),
        (["--teacache_thresh", "-1"], "--teacache_thresh must be > 0"),
        (["--use_ret_steps"], "--use_ret_steps is a TeaCache mode; give --teacache_thresh too"),
        (["--task", "flf2v-14B", "--size", "1280*720", "--first_frame", str(wan_ckpt / "config.json"),
          "--last_frame", str(wan_ckpt / "config.json"), "--teacache_thresh", "0.2"],
         "TeaCache published no Wan2.1 coefficients for flf2v-14B"),
    ]
    for args, message in cases:
        with pytest.raises(UserInputError, match=message):
            generate_py.main(base + args)


def test_wan_i2v_picks_the_coefficient_set_by_the_requested_size(tmp_path, monkeypatch):
    # At --size 1280*720 a wide image gives a 1280x704 video: still a 720P run, so the 720P coefficients.
    from PIL import Image

    from delta_cache.models.wan import teacache as wan_teacache

    ckpt = write_tiny_checkpoint(tmp_path / "i2v", num_layers=1, i2v=True)
    image = tmp_path / "wide.png"
    Image.new("RGB", (2048, 1080), (90, 30, 30)).save(image)
    asked = []
    original = wan_teacache.teacache_settings

    def recording(task, width, height, indicator="timestep_embedding"):
        asked.append((width, height))
        if len(asked) == 2:  # the second call is the run's (the first, validate's, only checks the task)
            raise RuntimeError("stop")
        return original(task, width, height, indicator)

    monkeypatch.setattr(wan_teacache, "teacache_settings", recording)
    with pytest.raises(RuntimeError, match="stop"):
        load_script(GENERATE).main(["--task", "i2v-14B", "--size", "1280*720", "--ckpt_dir", str(ckpt), "--image",
                                    str(image), "--frame_num", "5", "--teacache_thresh", "0.2"])
    assert asked == [(1280, 720), (1280, 720)]
    assert original("i2v-14B", 1280, 720).coefficients != original("i2v-14B", 1280, 704).coefficients
