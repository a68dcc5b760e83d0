"""Multi-GPU sampling (delta_cache/parallel.py): Wan2.1/generate.py and HunyuanVideo/sample_video.py under
torchrun with diffusers' context parallelism, here as two CPU processes (gloo)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from delta_cache import parallel
from delta_cache.errors import UserInputError
from delta_cache.models.hunyuan_video.checkpoint import DIT_WEIGHT
from delta_cache.models.hunyuan_video.context_parallel import local_key_mask
from delta_cache.models.hunyuan_video.tiny import write_tiny_checkpoint as write_tiny_hunyuan_checkpoint
from delta_cache.models.wan.tiny import write_tiny_checkpoint
from delta_cache.video import read_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
GENERATE = REPO / "Wan2.1" / "generate.py"
SAMPLE_VIDEO = REPO / "HunyuanVideo" / "sample_video.py"


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """The one-process references run on the CPU like the torchrun processes, also where a GPU is present (bf16
    on a GPU would not give the CPU processes' video)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def torchrun(script, args, cwd, env=None, timeout=600):
    """`script ARGS` as two torchrun CPU processes (gloo), one thread each, as a user would launch them."""
    base_env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd), "PYTHONPATH": str(REPO),
                "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *map(str, args)],
                          cwd=cwd, env={**base_env, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def test_ulysses_over_two_processes_gives_the_single_process_video(tmp_path):
    # torchrun with two CPU processes (gloo) and diffusers' Ulysses attention, the delta cache on: the same
    # video as one process, one file and one summary line (rank 0's), and each rank skips the same blocks.
    ckpt4 = write_tiny_checkpoint(tmp_path / "ckpt", num_layers=4)
    # a tiny native size (12 tokens, 6 per process): 832x480's VAE work took most of this test's time
    (ckpt4 / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    schedule = tmp_path / "every_other.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 4, "background_blocks": ["0-3"], "refresh_steps": [0, 1, 3]}}}))
    args = ["--size", "64*48", "--frame_num", "1", "--ckpt_dir", ckpt4, "--sample_steps", "4", "--base_seed", "5",
            "--cache_schedule", schedule, "--dit_fsdp", "--t5_fsdp"]
    load_script(GENERATE).main([*map(str, args[:-2]), "--save_file", str(tmp_path / "single.mp4")])  # one process
    out = tmp_path / "multi"
    out.mkdir()
    multi = torchrun(GENERATE, [*args, "--ulysses_size", "2", "--save_file", out / "multi.mp4"], cwd=out)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "context parallel over 2 processes: Ulysses 2, ring 1" in multi.stderr
    assert "the models are replicated on every GPU" in multi.stderr
    summaries = [line for line in multi.stdout.splitlines() if line.startswith("denoising time:")]
    assert len(summaries) == 1 and "cond 12/16, uncond 12/16" in summaries[0] and "MiB per process" in summaries[0]
    assert [p.name for p in out.iterdir()] == ["multi.mp4"]
    np.testing.assert_array_equal(read_video(out / "multi.mp4"), read_video(tmp_path / "single.mp4"))
    # Two processes without the degree flags: each says so in one line, before loading anything.
    bad = torchrun(GENERATE, [*args[:-2], "--save_file", out / "bad.mp4"], cwd=out, timeout=300)
    assert bad.returncode != 0  # (torchrun's launcher adds its own report of the failed ranks)
    message = "error: --ulysses_size x --ring_size = 1 must equal the number of processes; 2 processes were launched"
    # (each rank says it; torchrun may stop a rank before it does, once another has failed)
    assert bad.stderr.count(message) in (1, 2) and not (out / "bad.mp4").exists()
    # A prompt-extension model that does not load: rank 0 runs it alone, and both ranks say the same one line
    # (rank 1 used to fail in the broadcast with a traceback).
    broken = tmp_path / "broken_llm"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    bad = torchrun(GENERATE, [*args, "--ulysses_size", "2", "--use_prompt_extend", "--prompt_extend_model", broken,
                              "--save_file", out / "bad.mp4"], cwd=out, timeout=300)
    assert bad.returncode != 0 and not (out / "bad.mp4").exists()
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) in (1, 2) and len(set(errors)) == 1 and "broken_llm: cannot load it" in errors[0], bad.stderr[-3000:]
    ranks_own = bad.stderr.split("torch/distributed/elastic")[0]  # what follows is the launcher's own report
    assert "error: " in ranks_own and "Traceback" not in ranks_own, bad.stderr[-3000:]


def test_linear_forecast_decides_on_the_whole_sequence_over_two_processes(tmp_path):
    # The linear forecast keeps the line only while it beat holding at the last refresh: a comparison of
    # distances over all tokens. Each process holds half the tokens, so the distances are summed over both
    # (delta_cache.hooks._closer). Decided on its own half, each process kept or dropped the line on its own:
    # on this run of the committed trained model (its native size, upstream's default prompt) 2 of its 46 checks
    # differ between the halves, and the video differed from one process's. (Random models and shorter runs
    # tried here agreed on both halves, or differed below what the mp4 keeps: they cannot show this.)
    args = ["--ckpt_dir", REPO / "checkpoints" / "tiny-wan2.1-t2v", "--sample_steps", "50",
            "--base_seed", "3", "--cache_schedule", "tiny-wan2.1-t2v-profiled", "--cache_forecast", "linear"]
    load_script(GENERATE).main([*map(str, args), "--save_file", str(tmp_path / "single.mp4")])
    multi = torchrun(GENERATE, [*args, "--ulysses_size", "2", "--save_file", tmp_path / "multi.mp4"], cwd=tmp_path)
    assert multi.returncode == 0, multi.stderr[-3000:]
    np.testing.assert_array_equal(read_video(tmp_path / "multi.mp4"), read_video(tmp_path / "single.mp4"))


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserInputError, match="process 1 of this machine has no GPU of its own: it has 1; launch at "
                                             "most that many"):
        parallel.init_process_group(2, 1)


def test_ring_attention_runs_on_a_backend_that_returns_the_log_sum_exp():
    # diffusers' default ("native") backend refuses return_lse=True, which ring attention asks for at its first
    # attention call, after everything has loaded; a GPU is needed to run it, so here the calls are recorded.
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    calls = []

    class Transformer:
        def set_attention_backend(self, name):
            calls.append(name)

        def enable_parallelism(self, config, cp_plan):
            calls.append((config.ulysses_degree, config.ring_degree))

    for ulysses, ring, expected in ((2, 2, ["_native_cudnn", (2, 2)]), (4, 1, [(4, 1)])):
        calls.clear()
        group = parallel.ProcessGroup(rank=0, world_size=4, device=torch.device("cuda", 0), ulysses_degree=ulysses,
                                      ring_degree=ring)
        parallel.enable_context_parallel(Transformer(), group)
        assert calls == expected
    assert _AttentionBackendRegistry._is_context_parallel_available(AttentionBackendName("_native_cudnn"))


def test_a_plain_run_is_rank_0_of_1_without_torch_distributed():
    with parallel.process_group(1, 1) as group:
        assert (group.rank, group.world_size, group.is_main, group.is_parallel) == (0, 1, True, False)
        assert group.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
        assert not torch.distributed.is_initialized()


def test_parallel_degrees_must_fit_the_model():
    group = parallel.ProcessGroup(rank=0, world_size=4, device=torch.device("cpu"), ulysses_degree=4, ring_degree=1)
    parallel.check_model_fits(group, num_heads=40, num_tokens=32760, heads_flag="--ulysses_size")  # 14B, 832x480x81
    with pytest.raises(UserInputError, match="--ulysses_size 4 must divide the model's 14 attention heads"):
        parallel.check_model_fits(group, num_heads=14, num_tokens=32760, heads_flag="--ulysses_size")
    with pytest.raises(UserInputError, match="the video's 1562 tokens do not split evenly over 4 processes"):
        parallel.check_model_fits(group, num_heads=40, num_tokens=1562, heads_flag="--ulysses_size")


def test_heads_that_do_not_split_are_refused_before_loading(tmp_path, monkeypatch):
    # The head count is in config.json: a real model's load (minutes) need not come first. (WORLD_SIZE as
    # torchrun sets it; the check comes before the process group is joined.)
    from delta_cache.models.wan import checkpoint

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the heads were checked")

    monkeypatch.setattr(checkpoint, "load_wan_components", no_loading)
    monkeypatch.setenv("WORLD_SIZE", "2")
    upstream = write_tiny_checkpoint(tmp_path / "upstream", num_layers=2, num_heads=3)
    diffusers_layout = write_tiny_checkpoint(tmp_path / "diffusers", num_layers=2, num_heads=3, layout="diffusers")
    for ckpt in (upstream, diffusers_layout):
        with pytest.raises(UserInputError, match="--ulysses_size 2 must divide the model's 3 attention heads"):
            load_script(GENERATE).main(["--ckpt_dir", str(ckpt), "--size", "832*480", "--ulysses_size", "2",
                                        "--save_file", str(tmp_path / "v.mp4")])
    assert not (tmp_path / "v.mp4").exists()


def test_hunyuan_video_heads_that_do_not_split_are_refused_before_loading(tmp_path):
    # The head count comes from the weights file's shapes, memory-mapped: no model loads first.
    ckpt = write_tiny_hunyuan_checkpoint(tmp_path / "ckpts", num_layers=1, num_single_layers=1,
                                         num_attention_heads=3)
    args = ["--video-size", "32", "32", "--video-length", "5", "--infer-steps", "2", "--prompt", "x", "--flow-reverse",
            "--model-base", ckpt, "--dit-weight", ckpt / DIT_WEIGHT, "--ulysses-degree", "2",
            "--save-path", tmp_path / "out"]
    bad = torchrun(SAMPLE_VIDEO, args, cwd=tmp_path, env={"MODEL_BASE": str(ckpt)}, timeout=300)
    assert bad.returncode != 0
    ranks_own = bad.stderr.split("torch/distributed/elastic")[0]
    assert "error: --ulysses-degree 2 must divide the model's 3 attention heads" in ranks_own, bad.stderr[-3000:]
    assert "loading HunyuanVideo" not in ranks_own and "Traceback" not in ranks_own
    assert not (tmp_path / "out").exists()


def test_vace_ulysses_over_two_processes_gives_the_single_process_video(tmp_path):
    # Wan VACE (models/wan/context_parallel.py: the control tokens split with the video tokens at the first
    # control block) with a source video, a mask and a reference image, the delta cache on over a run that
    # contains a control hint: the same video as one process.
    from delta_cache.video import save_video
    from PIL import Image

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", num_layers=10, vace=True, seed=2)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    frames = np.zeros((9, 48, 64, 3), np.float32)
    for i in range(9):
        frames[i, 10:30, 4 + 4 * i:24 + 4 * i] = (0.9, 0.2, 0.1)
    mask = np.zeros_like(frames)
    mask[:, 24:] = 1.0
    save_video(frames, tmp_path / "src.mp4", fps=16)
    save_video(mask, tmp_path / "mask.mp4", fps=16)
    Image.new("RGB", (30, 50), (20, 180, 60)).save(tmp_path / "ref.png")
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 10, "background_blocks": ["3-7"], "refresh_steps": [0, 1]}}}))
    args = ["--task", "vace-1.3B", "--ckpt_dir", ckpt, "--src_video", tmp_path / "src.mp4", "--src_mask",
            tmp_path / "mask.mp4", "--src_ref_images", tmp_path / "ref.png", "--sample_steps", "4", "--base_seed", "5",
            "--cache_schedule", schedule]
    load_script(GENERATE).main([*map(str, args), "--save_file", str(tmp_path / "single.mp4")])  # one process
    multi = torchrun(GENERATE, [*args, "--ulysses_size", "2", "--save_file", tmp_path / "multi.mp4"], cwd=tmp_path)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "context parallel over 2 processes: Ulysses 2, ring 1" in multi.stderr
    summaries = [line for line in multi.stdout.splitlines() if line.startswith("denoising time:")]
    assert len(summaries) == 1 and "cond 30/40, uncond 30/40" in summaries[0]
    single, parallel_video = read_video(tmp_path / "single.mp4"), read_video(tmp_path / "multi.mp4")
    assert single.shape == (5, 48, 64, 3)
    np.testing.assert_array_equal(parallel_video, single)


def test_hunyuan_video_ulysses_over_two_processes_gives_the_single_process_video(tmp_path, monkeypatch):
    # HunyuanVideo's joint [video; text] attention with its text-padding key mask, split over two processes
    # (models/hunyuan_video/context_parallel.py), true CFG and the delta cache on both block lists: the same
    # video as one process. The prompt fills a few of the 255 text tokens, so most of the padding lies in
    # rank 0's half of the text; without the per-rank mask the video differs (85% of the pixels, by up to 18).
    # 255 does not split over two processes: they pad the text with one more masked token (upstream has no
    # such rule: --text-len 256 runs on 3 or 6 GPUs).
    ckpt = write_tiny_hunyuan_checkpoint(tmp_path / "ckpts", num_layers=2, num_single_layers=4, seed=1)
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "transformer_blocks": {"num_blocks": 2, "background_blocks": ["0-1"], "refresh_steps": [0, 1, 3]},
        "single_transformer_blocks": {"num_blocks": 4, "background_blocks": ["1-3"], "refresh_steps": [0, 2]}}}))
    args = ["--video-size", "32", "48", "--video-length", "5", "--infer-steps", "4", "--prompt",
            "a red square moves left", "--seed", "3", "--cfg-scale", "2", "--text-len", "255", "--flow-reverse",
            "--model-base", ckpt,
            "--dit-weight", ckpt / DIT_WEIGHT, "--cache_schedule", schedule]
    monkeypatch.setenv("MODEL_BASE", str(ckpt))
    load_script(SAMPLE_VIDEO).main([*map(str, args), "--save-path", str(tmp_path / "single")])  # one process
    multi = torchrun(SAMPLE_VIDEO, [*args, "--ulysses-degree", "2", "--save-path", tmp_path / "multi"], cwd=tmp_path,
                     env={"MODEL_BASE": str(ckpt)})
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "context parallel over 2 processes: Ulysses 2" in multi.stderr
    summaries = [line for line in multi.stdout.splitlines() if line.startswith("denoising time:")]
    assert multi.stdout.count("Sample save to:") == 1 and len(summaries) == 1
    assert "(cond 16/24, uncond 16/24)" in summaries[0] and "per process" in summaries[0]
    [single_file], [multi_file] = (list((tmp_path / name).iterdir()) for name in ("single", "multi"))
    assert single_file.name.split("_", 1)[1] == multi_file.name.split("_", 1)[1] == "seed3_a red square moves left.mp4"
    np.testing.assert_array_equal(read_video(multi_file), read_video(single_file))


def test_local_key_mask_cuts_each_ranks_video_and_text():
    # Whole sequence: 4 video tokens then 6 text tokens (2 real, 4 padding); two ranks.
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    assert local_key_mask(mask, 2, 3, 0, 2)[0, 0, 0].tolist() == [1, 1, 1, 1, 0]
    assert local_key_mask(mask, 2, 3, 1, 2)[0, 0, 0].tolist() == [1, 1, 0, 0, 0]
    assert local_key_mask(mask, 4, 6, 0, 1) is mask  # one process: the mask is already local
    with pytest.raises(ValueError, match="attention mask of length 10 does not fit 2 ranks of 3 video and 3 text"):
        local_key_mask(mask, 3, 3, 0, 2)


@pytest.mark.parametrize("args, message", [  # (launched as two processes; tests/test_hunyuan_generate.py: one)
    (["--ring-degree", "2"], "--ring-degree > 1 is not supported: diffusers' ring attention cannot hold"),
    (["--ulysses-degree", "2", "--use-cpu-offload"], "--use-cpu-offload does not work with multi-GPU"),
])
def test_hunyuan_video_parallel_flags_are_checked_before_loading(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    sample_video = load_script(SAMPLE_VIDEO)
    parsed = sample_video.build_parser().parse_args(["--prompt", "a cat", "--model-base", str(tmp_path), *args])
    with pytest.raises(UserInputError, match=re.escape(message)):
        sample_video.validate(parsed)
