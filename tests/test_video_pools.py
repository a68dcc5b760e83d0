"""--refresh_videos_every: the transformer trains on successive pools of --num_videos training videos, each
encoded when first needed, so a resume on a fresh machine re-encodes only the current pool."""

import pytest
import torch
from safetensors.torch import load_file

from delta_cache.errors import UserInputError
from delta_cache.models.wan import keys
from delta_cache.synthetic import make_video
from delta_cache.training import loop as training_loop
from tiny_training import run as _run
from tiny_training import run_in_slices as _run_in_slices
from tiny_training import train_tiny

POOLS = ["--num_videos", "2", "--refresh_videos_every", "2"]  # TINY trains 4 transformer steps: pools 0, 1


def _prompts(first: int, count: int = 2) -> list[str]:
    return [make_video(i, "train", num_frames=9, height=64, width=64).prompt for i in range(first, first + count)]


def test_each_pool_of_steps_trains_on_its_own_videos(tmp_path, monkeypatch):
    seen = {}
    dit_batch = train_tiny.dit_batch

    def spy(args, step, prompts, negative_prompt):
        seen[step] = list(prompts)
        return dit_batch(args, step, prompts, negative_prompt)

    monkeypatch.setattr(train_tiny, "dit_batch", spy)
    _run(tmp_path / "out", *POOLS)
    assert seen == {0: _prompts(0), 1: _prompts(0), 2: _prompts(2), 3: _prompts(2)}
    latents = torch.load(tmp_path / "out.work" / train_tiny.LATENTS_FILE, weights_only=False)
    assert latents["pool"] == 1 and latents["prompts"] == _prompts(2)


def test_a_resume_re_encodes_the_current_pool_and_trains_the_same_weights(tmp_path):
    def run(out, *extra):
        return _run(out, *POOLS, *extra)

    run(tmp_path / "straight")
    run(tmp_path / "sliced", "--stop_after_minutes", "1e-9")
    _run_in_slices(run, tmp_path / "sliced", until=lambda s: s.get("paused") == {"stage": "dit", "step": 3}, resume=True)
    (tmp_path / "sliced.work" / train_tiny.LATENTS_FILE).unlink()  # a fresh machine: only the state came along
    _run_in_slices(run, tmp_path / "sliced", resume=True)
    a, b = (load_file(tmp_path / name / keys.TRANSFORMER_FILE) for name in ("straight", "sliced"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_pool_that_would_overrun_the_time_budget_waits_for_the_resume(tmp_path, monkeypatch):
    def run(out, *extra):
        return _run(out, *POOLS, *extra)

    run(tmp_path / "straight")
    run(tmp_path / "run", "--stop_after_minutes", "1e-9")
    _run_in_slices(run, tmp_path / "run", until=lambda s: s.get("paused") == {"stage": "dit", "step": 1}, resume=True)
    # A budget that is nearly spent but never spent: only the pool switch before step 2 may pause.
    monkeypatch.setattr(training_loop.TimeBudget, "remaining", lambda self: 1e-6)
    assert run(tmp_path / "run", "--stop_after_minutes", "60", "--resume") == {"paused": {"stage": "dit", "step": 2}}
    state = torch.load(tmp_path / "run.work" / train_tiny.STATE_FILE, weights_only=False)
    assert (state["stage"], state["step"]) == ("dit", 2)  # checkpointed where it paused
    monkeypatch.undo()
    run(tmp_path / "run", "--resume")
    a, b = (load_file(tmp_path / name / keys.TRANSFORMER_FILE) for name in ("straight", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_latents_that_would_overrun_the_time_budget_wait_for_the_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(training_loop.TimeBudget, "remaining", lambda self: 1e-6)  # nearly spent, never spent
    assert _run(tmp_path / "run", "--stop_after_minutes", "60") == {"paused": {"stage": "latents", "step": 0}}
    assert not (tmp_path / "run.work" / train_tiny.LATENTS_FILE).exists()
    monkeypatch.undo()
    assert _run(tmp_path / "run", "--resume")["dit"]["steps"] == 4


def test_num_videos_may_change_until_the_latents_exist(tmp_path):
    out = tmp_path / "run"
    _run(out, "--num_videos", "4", "--stop_after_minutes", "1e-9")  # paused in the VAE stage
    _run_in_slices(lambda o, *extra: _run(o, "--num_videos", "2", *extra), out,
                   until=lambda s: s.get("paused") == {"stage": "dit", "step": 1}, resume=True)
    state = torch.load(tmp_path / "run.work" / train_tiny.STATE_FILE, weights_only=False)
    assert state["args"]["num_videos"] == 2
    with pytest.raises(UserInputError, match="--num_videos differ"):
        _run(out, "--num_videos", "4", "--resume")
    with pytest.raises(UserInputError, match="--refresh_videos_every must be >= 0"):
        _run(tmp_path / "x", "--refresh_videos_every", "-1")
