"""Multi-GPU sampling (delta_cache/parallel.py): Wan2.1/generate.py under torchrun with diffusers' context
parallelism, here as two CPU processes (gloo)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from delta_cache import parallel
from delta_cache.errors import UserInputError
from delta_cache.models.wan.tiny import write_tiny_checkpoint
from delta_cache.video import read_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
GENERATE = REPO / "Wan2.1" / "generate.py"


def test_ulysses_over_two_processes_gives_the_single_process_video(tmp_path):
    # torchrun with two CPU processes (gloo) and diffusers' Ulysses attention, the delta cache on: the same
    # video as one process, one file and one summary line (rank 0's), and each rank skips the same blocks.
    ckpt4 = write_tiny_checkpoint(tmp_path / "ckpt", num_layers=4)
    schedule = tmp_path / "every_other.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 4, "background_blocks": ["0-3"], "refresh_steps": [0, 1, 3]}}}))
    args = ["--size", "832*480", "--frame_num", "1", "--ckpt_dir", ckpt4, "--sample_steps", "4", "--base_seed", "5",
            "--cache_schedule", schedule, "--dit_fsdp", "--t5_fsdp"]
    load_script(GENERATE).main([*map(str, args[:-2]), "--save_file", str(tmp_path / "single.mp4")])  # one process
    out = tmp_path / "multi"
    out.mkdir()
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(out), "PYTHONPATH": str(REPO)}
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(REPO / "tests" / "torchrun_cpu.py"), str(GENERATE), *map(str, args), "--ulysses_size",
                            "2", "--save_file", str(out / "multi.mp4")],
                           cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "context parallel over 2 processes: Ulysses 2, ring 1" in multi.stderr
    assert "the models are replicated on every GPU" in multi.stderr
    summaries = [line for line in multi.stdout.splitlines() if line.startswith("denoising time:")]
    assert len(summaries) == 1 and "cond 12/16, uncond 12/16" in summaries[0] and "MiB per process" in summaries[0]
    assert [p.name for p in out.iterdir()] == ["multi.mp4"]
    np.testing.assert_array_equal(read_video(out / "multi.mp4"), read_video(tmp_path / "single.mp4"))
    # Two processes without the degree flags: each says so in one line, before loading anything.
    bad = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(REPO / "tests" / "torchrun_cpu.py"), str(GENERATE), *map(str, args[:-2]),
                          "--save_file", str(out / "bad.mp4")], cwd=out, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0  # (torchrun's launcher adds its own report of the failed ranks)
    message = "error: --ulysses_size x --ring_size = 1 must equal the number of processes; 2 processes were launched"
    assert bad.stderr.count(message) == 2 and not (out / "bad.mp4").exists()


def test_parallel_degrees_must_fit_the_model():
    group = parallel.ProcessGroup(rank=0, world_size=4, device=torch.device("cpu"), ulysses_degree=4, ring_degree=1)
    parallel.check_model_fits(group, num_heads=40, num_tokens=32760, heads_flag="--ulysses_size")  # 14B, 832x480x81
    with pytest.raises(UserInputError, match="--ulysses_size 4 must divide the model's 14 attention heads"):
        parallel.check_model_fits(group, num_heads=14, num_tokens=32760, heads_flag="--ulysses_size")
    with pytest.raises(UserInputError, match="the video's 1562 tokens do not split evenly over 4 processes"):
        parallel.check_model_fits(group, num_heads=40, num_tokens=1562, heads_flag="--ulysses_size")
