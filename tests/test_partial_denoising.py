"""Denoising that starts part-way (delta_cache/models/partial_denoising.py) on the committed tiny models, and
scripts/check_quality.py --start_sigma, the diagnostic built on it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from delta_cache.errors import UserInputError
from delta_cache.models.partial_denoising import StartBelowGrid
from delta_cache.models.runner import load_runner
from delta_cache.synthetic import make_video
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
CKPTS = {"wan": REPO / "checkpoints" / "tiny-wan2.1-t2v", "hunyuan_video": REPO / "checkpoints" / "tiny-hunyuanvideo-t2v"}
STEPS = 10


def _steps_at_or_below(sigma: float, family: str) -> int:
    """Steps of the front end's 10-step grid at noise levels <= sigma, from the upstream grids' formulas:
    Wan's UniPC linspace(0.999, 0) with shift 5, HunyuanVideo's Euler linspace(1, 0) with shift 7."""
    first, shift = (0.999, 5.0) if family == "wan" else (1.0, 7.0)
    u = np.linspace(first, 0.0, STEPS + 1)[:-1]
    return int((shift * u / (1 + (shift - 1) * u) <= sigma).sum())


class CallCounter:
    """Real forward calls of the transformer, and the latents and timestep it saw first."""

    def __init__(self, transformer):
        self.reset()
        transformer.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if self.first_input is None:
            self.first_input = kwargs["hidden_states"].detach().clone()
            self.first_timestep = float(kwargs["timestep"].flatten()[0])
        self.calls += 1

    def reset(self):
        self.calls, self.first_input, self.first_timestep = 0, None, None


@pytest.mark.parametrize("family, branches", [("wan", 2), ("hunyuan_video", 1)])  # Wan: CFG's two calls
def test_sampling_from_a_noised_video_runs_only_the_steps_below_its_level(family, branches):
    runner = load_runner(family, CKPTS[family], width=128, height=128, num_frames=17, num_steps=STEPS,
                         device=torch.device("cpu"))
    counter = CallCounter(runner.transformer)
    video = make_video(3, "eval")
    clean = runner.encode(video.frames)
    assert clean.shape[2:] == (5, 16, 16)  # 17 frames -> 5 latent frames, 128 px -> 16 latent px

    # Several steps (the multistep solver's higher orders run), from the first grid level <= 0.9.
    latents, _ = runner.generate(video.prompt, 0, start=(clean, 0.9))
    steps = _steps_at_or_below(0.9, family)
    assert 4 <= steps < STEPS and counter.calls == branches * steps
    # It started from the clean latents noised to exactly the level of the first step it ran (not to 0.9).
    noise = torch.randn(clean.shape, generator=torch.Generator("cpu").manual_seed(0))
    level = ((counter.first_input - clean) / (noise - clean)).median().item()
    assert level < 0.9 and level == pytest.approx(counter.first_timestep / 1000, abs=2e-3)  # Wan: int timesteps
    # and it ended much nearer the clean latents than where it started (the preview models: about 1/3)
    assert (latents.float() - clean).pow(2).mean() < (counter.first_input - clean).pow(2).mean() / 2

    with pytest.raises(StartBelowGrid, match="below the grid's last step"):
        runner.generate(video.prompt, 0, start=(clean, 1e-4))
    # Afterwards the scheduler is the pipeline's own again: a plain sample runs every step from the seed's noise.
    counter.reset()
    runner.generate(video.prompt, 0)
    assert counter.calls == branches * STEPS
    torch.testing.assert_close(counter.first_input.float(), noise)


def test_check_quality_start_sigma(tmp_path):
    check_quality = load_script(REPO / "scripts" / "check_quality.py")
    summary = check_quality.main(["--family", "wan", "--num_pairs", "1", "--start_sigma", "0.6",
                                  "--sample_steps", str(STEPS), "--out", str(tmp_path)])
    assert summary["start_sigma"] == 0.6 and summary["pairs"] == 1
    written = json.loads((tmp_path / "quality_wan_sigma0.6.json").read_text())
    assert written["summary"] == summary
    report = (tmp_path / "quality_wan_sigma0.6.md").read_text()
    assert "Denoising from sigma 0.6" in report and "quality bar" not in report
    assert not (tmp_path / "quality_wan.json").exists()  # the bar's files stay the bar's
    for bad in ("0", "1", "1.5"):
        with pytest.raises(UserInputError, match="--start_sigma must be between 0 and 1"):
            check_quality.main(["--start_sigma", bad, "--out", str(tmp_path)])
    with pytest.raises(UserInputError, match="below the grid's last step"):
        check_quality.main(["--start_sigma", "0.01", "--num_pairs", "1", "--sample_steps", str(STEPS),
                            "--out", str(tmp_path / "low")])
    with pytest.raises(UserInputError, match="needs a tiny trained checkpoint"):
        check_quality.main(["--start_sigma", "0.5", "--ckpt_dir", str(tmp_path), "--out", str(tmp_path)])
