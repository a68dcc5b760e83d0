"""HunyuanVideo/sample_video.py: upstream command lines on tiny checkpoints, bad input, bit-identity,
real block counts, both streams restored on skipped blocks, per-branch state under true CFG."""

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

import delta_cache
from delta_cache.errors import UserInputError
from delta_cache.models.hunyuan_video import config
from delta_cache.models.hunyuan_video.checkpoint import DIT_WEIGHT, load_hunyuan_video_components
from delta_cache.models.hunyuan_video.pipeline import build_pipeline, flow_sigmas, generate, make_scheduler
from delta_cache.models.hunyuan_video.tiny import build_tiny_components, write_tiny_checkpoint
from script_loader import load_script

torch.set_num_threads(1)  # tiny matmuls are ~1000x slower with two threads on 2-core machines

REPO = Path(__file__).resolve().parent.parent
SAMPLE_VIDEO = REPO / "HunyuanVideo" / "sample_video.py"
FP32 = dict(dtype=torch.float32, vae_dtype=torch.float32, text_encoder_dtype=torch.float32,
            text_encoder_2_dtype=torch.float32)
PROMPT = "a red square moves left"

# The paper's HunyuanVideo preset, written out here (not read back from the preset file).
DOUBLE_BACKGROUND = set(range(6, 20))
DOUBLE_REFRESH = set(range(7)) | {12, 18, 24, 30, 36, 42, 48}
SINGLE_BACKGROUND = {0, 2, 4, 5, 6, 7, *range(10, 22), 23, 25, 26, 27, 31, 33}
SINGLE_REFRESH = set(range(7)) | {18, 26, 32, 38, 42, 46, 48}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Full-depth (20 double + 40 single blocks) tiny checkpoint, upstream layout: the model base."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("hunyuan") / "ckpts")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2 + 4 block model in both layouts, same weights."""
    root = tmp_path_factory.mktemp("hunyuan_small")
    options = dict(num_layers=2, num_single_layers=4, seed=1)
    return (write_tiny_checkpoint(root / "upstream", **options),
            write_tiny_checkpoint(root / "diffusers", layout="diffusers", **options))


@pytest.fixture(scope="module")
def components(ckpt):
    return load_hunyuan_video_components(ckpt / DIT_WEIGHT, ckpt, **FP32)


def quiet_pipeline(components):
    pipe = build_pipeline(components, shift=7.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_video(path) -> np.ndarray:
    """Decode an mp4 into uint8 (F, H, W, C) frames. (Not `list(reader)`: the reader's len() is inf.)"""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path), format="ffmpeg") as reader:
        return np.stack([frame for frame in reader])


def run_cli(args, cwd, env=None):
    base_env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SAMPLE_VIDEO), *map(str, args)], cwd=cwd,
                          env={**base_env, **(env or {})}, capture_output=True, text=True, timeout=600)


# --- facts ---------------------------------------------------------------------------------------------

def test_sampler_grid_is_upstreams():
    scheduler = make_scheduler(7.0)
    scheduler.set_timesteps(sigmas=flow_sigmas(50))
    sigmas, timesteps = scheduler.sigmas, scheduler.timesteps
    assert sigmas.dtype == torch.float32 and len(sigmas) == 51 and len(timesteps) == 50
    # shift*s / (1 + (shift-1)*s) at s = 1 - i/50
    expected = {0: 1.0, 1: 6.86 / 6.88, 10: 5.6 / 5.8, 25: 3.5 / 4.0, 40: 1.4 / 2.2, 48: 0.28 / 1.24, 49: 0.125,
                50: 0.0}
    for i, value in expected.items():
        assert float(sigmas[i]) == pytest.approx(value, abs=6e-8), i
    assert float(timesteps[0]) == 1000.0 and float(timesteps[1]) == pytest.approx(997.093, abs=1e-3)
    # upstream computes the grid in float32 torch; numpy's float64 grid (diffusers' default) is off by one
    # bit at some steps (8, 11, 32, 45 of 50): ours must equal upstream's bit for bit.
    s = torch.linspace(1, 0, 51)
    upstream = 7.0 * s / (1 + 6.0 * s)
    assert torch.equal(sigmas, upstream) and torch.equal(timesteps, upstream[:-1] * 1000)


def test_upstream_facts():
    assert [config.align_to(v) for v in (360, 368, 720, 1280, 1)] == [368, 368, 720, 1280, 16]
    assert config.video_seeds(42, 3) == [42, 43, 44]
    seeds = config.video_seeds(None, 50)
    assert all(0 <= s <= 1_000_000 for s in seeds) and len(set(seeds)) > 1
    assert config.negative_prompt(None, 1.0) is None and config.negative_prompt("blurry", 1.0) is None
    assert config.negative_prompt(None, 2.0) == config.NEGATIVE_PROMPT and config.NEGATIVE_PROMPT.startswith("Aerial")
    assert config.negative_prompt(" blurry ", 2.0) == "blurry"
    assert config.prompt_template(129, "dit-llm-encode", "dit-llm-encode-video") == DEFAULT_PROMPT_TEMPLATE
    assert config.prompt_template(1, "dit-llm-encode", "dit-llm-encode-video")["crop_start"] == 36
    name = config.output_file_name(7, "a/b " + "x" * 200, now=datetime(2025, 1, 2, 3, 4, 5))
    assert name == "2025-01-02-03:04:05_seed7_ab " + "x" * 96 + ".mp4"  # cut at 100, then drop "/"
    chinese = config.output_file_name(7, "一只猫在草地上走" * 20, now=datetime(2025, 1, 2, 3, 4, 5))
    assert len(chinese.encode()) <= 255 and chinese.endswith(".mp4")  # (100 characters are 300 bytes)
    assert chinese.startswith("2025-01-02-03:04:05_seed7_一只猫在草地上走一只猫") and len(chinese.encode()) > 240
    assert config.output_dir("./results", "") == Path("./results")
    assert config.output_dir("./results", "run2") == Path("./results_run2")
    assert config.vae_latent_channels("884-16c-hy") == 16
    assert config.model_base({}) == Path("./ckpts") and config.model_base({"MODEL_BASE": "/m"}) == Path("/m")


def test_dit_weight_folder(tmp_path):
    (tmp_path / "mp_rank_00_model_states.pt").write_bytes(b"")
    assert config.dit_weight_file(tmp_path, "module") == tmp_path / "mp_rank_00_model_states.pt"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pytorch_model_ema.pt").write_bytes(b"")
    assert config.dit_weight_file(bare, "ema") == bare / "pytorch_model_ema.pt"
    with pytest.raises(UserInputError, match="pytorch_model_module.pt"):
        config.dit_weight_file(bare, "module")
    assert config.dit_weight_file(tmp_path / "x.pt", "module") == tmp_path / "x.pt"


def test_help_imports_no_torch():
    code = (f"import sys; sys.path.insert(0, {str(SAMPLE_VIDEO.parent)!r}); import sample_video; "
            "sample_video.build_parser().format_help(); assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr


# --- sampling ------------------------------------------------------------------------------------------

def test_cache_off_is_bit_identical_to_plain_diffusers(components):
    pipe = quiet_pipeline(components)
    common = dict(height=48, width=64, num_frames=5, num_inference_steps=3)  # 3: numpy's grid is off by a bit

    ours = generate(pipe, prompt=PROMPT, negative_prompt=None, embedded_guidance_scale=6.0, cfg_scale=1.0, seed=3,
                    **common)
    s = torch.linspace(1, 0, 4)
    assert torch.equal(pipe.scheduler.sigmas, 7 * s / (1 + 6 * s))  # the run used upstream's grid
    plain = pipe(prompt=PROMPT, guidance_scale=6.0, sigmas=flow_sigmas(3), output_type="np",
                 generator=torch.Generator("cpu").manual_seed(3), **common).frames[0]
    np.testing.assert_array_equal(ours.frames, plain)
    assert ours.frames.shape == (5, 48, 64, 3) and ours.denoise_seconds > 0

    # true CFG: negative prompt + true_cfg_scale, a second ("uncond") call per step
    cfg = generate(pipe, prompt=PROMPT, negative_prompt=config.NEGATIVE_PROMPT, embedded_guidance_scale=6.0,
                   cfg_scale=2.5, seed=3, **common)
    plain_cfg = pipe(prompt=PROMPT, negative_prompt=config.NEGATIVE_PROMPT, true_cfg_scale=2.5, guidance_scale=6.0,
                     sigmas=flow_sigmas(3), output_type="np", generator=torch.Generator("cpu").manual_seed(3),
                     **common).frames[0]
    np.testing.assert_array_equal(cfg.frames, plain_cfg)
    assert not np.array_equal(cfg.frames, ours.frames)


def _record_block_calls(transformer):
    """(block list, block index) -> steps at which the block really ran, counted by calls of its attention."""
    calls, step = defaultdict(list), [-1]
    handles = [transformer.register_forward_pre_hook(lambda *_: step.__setitem__(0, step[0] + 1))]
    for list_name in ("transformer_blocks", "single_transformer_blocks"):
        for index, block in enumerate(getattr(transformer, list_name)):
            def ran(*_, key=(list_name, index)):
                calls[key].append(step[0])
            handles.append(block.attn.register_forward_pre_hook(ran))
    return calls, handles


def test_preset_computes_1632_of_3000_real_block_calls(components):
    pipe = quiet_pipeline(components)
    transformer = pipe.transformer
    calls, hooks = _record_block_calls(transformer)
    handle = delta_cache.apply_delta_cache(transformer, "hunyuanvideo-720p", num_inference_steps=50)
    try:
        generate(pipe, prompt=PROMPT, negative_prompt=None, height=32, width=32, num_frames=5,
                 num_inference_steps=50, embedded_guidance_scale=6.0, cfg_scale=1.0, seed=0)
    finally:
        for hook in hooks:
            hook.remove()
        delta_cache.remove_delta_cache(transformer)

    all_steps = list(range(50))
    for (list_name, index), steps in calls.items():
        background, refresh = ((DOUBLE_BACKGROUND, DOUBLE_REFRESH) if list_name == "transformer_blocks"
                               else (SINGLE_BACKGROUND, SINGLE_REFRESH))
        assert steps == (sorted(refresh) if index in background else all_steps), (list_name, index)
    per_list = Counter()
    for (list_name, _), steps in calls.items():
        per_list[list_name] += len(steps)
    assert per_list == {"transformer_blocks": 6 * 50 + 14 * 14, "single_transformer_blocks": 16 * 50 + 24 * 14}
    assert sum(per_list.values()) == 1632
    stats = handle.stats()
    assert (stats["computed_block_evals"], stats["total_block_evals"]) == (1632, 3000)


def test_true_cfg_counts_each_branch(components):
    pipe = quiet_pipeline(components)
    transformer = pipe.transformer
    calls, hooks = _record_block_calls(transformer)
    handle = delta_cache.apply_delta_cache(transformer, "hunyuanvideo-720p", num_inference_steps=50)
    try:
        generate(pipe, prompt=PROMPT, negative_prompt="blurry", height=32, width=32, num_frames=1,
                 num_inference_steps=50, embedded_guidance_scale=6.0, cfg_scale=3.0, seed=0)
    finally:
        for hook in hooks:
            hook.remove()
        delta_cache.remove_delta_cache(transformer)
    assert sum(len(steps) for steps in calls.values()) == 2 * 1632
    branches = handle.stats()["branches"]
    assert {name: (b["calls"], b["computed_block_evals"], b["total_block_evals"]) for name, b in branches.items()} \
        == {"cond": (50, 1632, 3000), "uncond": (50, 1632, 3000)}


def _capture_blocks(transformer, list_name, indices, store):
    """Record (hidden, encoder_hidden) entering and leaving the given blocks, per call."""
    handles = []
    for index in indices:
        block = getattr(transformer, list_name)[index]

        def before(_, args, key=(list_name, index)):
            store[("in", *key)].append((args[0].clone(), args[1].clone()))

        def after(_, args, output, key=(list_name, index)):
            store[("out", *key)].append((output[0].clone(), output[1].clone()))

        handles += [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
    return handles


def test_skipped_blocks_restore_both_streams_per_branch(tmp_path):
    # Real HunyuanVideo blocks, two calls per branch: call 0 refreshes (records deltas), call 1 reuses.
    transformer = build_tiny_components(num_layers=4, num_single_layers=4, seed=2)["transformer"]
    torch.nn.Module.to(transformer, torch.float32)
    schedule = tmp_path / "two_steps.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 2, "block_lists": {
        "transformer_blocks": {"background_blocks": ["1-2"], "refresh_steps": [0]},
        "single_transformer_blocks": {"background_blocks": ["0-1"], "refresh_steps": [0]},
    }}))
    store = defaultdict(list)
    hooks = (_capture_blocks(transformer, "transformer_blocks", [1, 2, 3], store)
             + _capture_blocks(transformer, "single_transformer_blocks", [0, 1, 2], store))
    delta_cache.apply_delta_cache(transformer, str(schedule), num_inference_steps=2)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, generator=generator)
    texts = {"cond": torch.randn(1, 7, 48, generator=generator), "uncond": torch.randn(1, 7, 48, generator=generator)}
    pooled = torch.randn(1, 24, generator=generator)
    try:
        with torch.no_grad():
            for timestep in (900.0, 700.0):
                for branch in ("cond", "uncond"):  # as HunyuanVideoPipeline does under true CFG
                    with transformer.cache_context(branch):
                        transformer(hidden_states=latents, timestep=torch.tensor([timestep]),
                                    encoder_hidden_states=texts[branch], encoder_attention_mask=torch.ones(1, 7),
                                    pooled_projections=pooled, guidance=torch.tensor([6000.0]), return_dict=False)
    finally:
        for hook in hooks:
            hook.remove()
        delta_cache.remove_delta_cache(transformer)

    # store[...] holds, per block, one entry per call in order: cond refresh, uncond refresh, cond reuse, uncond reuse
    for first, last, next_block in ((("transformer_blocks", 1), ("transformer_blocks", 2), ("transformer_blocks", 3)),
                                    (("single_transformer_blocks", 0), ("single_transformer_blocks", 1),
                                     ("single_transformer_blocks", 2))):
        deltas = {}
        for call, branch in enumerate(("cond", "uncond")):
            run_in, run_out = store[("in", *first)][call], store[("out", *last)][call]
            deltas[branch] = [out - inp for out, inp in zip(run_out, run_in)]
        for call, branch in ((2, "cond"), (3, "uncond")):
            run_in = store[("in", *first)][call]
            entering_next = store[("in", *next_block)][call]
            for stream, (x, delta, got) in enumerate(zip(run_in, deltas[branch], entering_next)):
                torch.testing.assert_close(got, x + delta, rtol=0, atol=0)  # image (0) and text (1) tokens
                assert not torch.equal(got, x), (first, branch, stream)  # passing a stream through would fail
        for stream in (0, 1):  # each branch used its own delta
            assert not torch.allclose(deltas["cond"][stream], deltas["uncond"][stream])


def test_upstream_and_diffusers_layouts_give_identical_videos(small):
    upstream, diffusers = small
    frames = []
    for dit_weight, model_base in ((upstream / DIT_WEIGHT, upstream), (diffusers, diffusers)):
        pipe = quiet_pipeline(load_hunyuan_video_components(dit_weight, model_base, **FP32))
        frames.append(generate(pipe, prompt=PROMPT, negative_prompt="blurry", height=32, width=48, num_frames=5,
                               num_inference_steps=3, embedded_guidance_scale=6.0, cfg_scale=2.0, seed=5).frames)
    np.testing.assert_array_equal(frames[0], frames[1])
    assert frames[0].shape == (5, 32, 48, 3) and frames[0].std() > 0


# --- command line --------------------------------------------------------------------------------------

def upstream_name(seed: int, prompt: str) -> str:
    """Regex of upstream's output file name: `{%Y-%m-%d-%H:%M:%S}_seed{seed}_{prompt}.mp4`."""
    return r"\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2}" + f"_seed{seed}_{re.escape(prompt)}" + r"\.mp4"


def test_readme_command_line_reports_1632_of_3000(ckpt, tmp_path):
    # The user's README command (small size/length for CPU time), from inside HunyuanVideo/ as users run it:
    # the folder holds the real script (symlinked) and `ckpts` (the tiny checkpoint).
    workdir = tmp_path / "HunyuanVideo"
    workdir.mkdir()
    (workdir / "sample_video.py").symlink_to(SAMPLE_VIDEO)
    (workdir / "ckpts").symlink_to(ckpt)
    args = ["--video-size", "64", "64", "--video-length", "5", "--infer-steps", "50", "--prompt", "cat walk on grass",
            "--flow-reverse", "--use-cpu-offload", "--save-path", "./results", "--seed", "42", "--model-base", "ckpts",
            "--dit-weight", "ckpts/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt", "--delta_cache"]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path), "MODEL_BASE": str(ckpt)}
    proc = subprocess.run([sys.executable, "sample_video.py", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "delta_cache: computed 1632/3000 block evaluations | ideal speedup 1.84x" in proc.stdout
    assert "plans 1632/3000 block evaluations per branch at 50 steps" in proc.stderr  # the plan logged before
    assert "--flow-reverse" not in proc.stderr
    files = list((workdir / "results").iterdir())
    assert len(files) == 1 and re.fullmatch(upstream_name(42, "cat walk on grass"), files[0].name)
    assert read_video(files[0]).shape == (5, 64, 64, 3)
    assert sorted(p.name for p in workdir.iterdir()) == ["ckpts", "results", "sample_video.py"]


def test_diffusers_folder_cfg_videos_and_suffix(small, tmp_path):
    # --model-base names a diffusers folder (the default --dit-weight does not exist); no --flow-reverse;
    # true CFG with a custom schedule: each branch keeps its own count; two videos, seeds 7 and 8.
    _, diffusers = small
    schedule = tmp_path / "small.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 8, "block_lists": {
        "transformer_blocks": {"background_blocks": [1], "refresh_steps": [0, 1, 4]},
        "single_transformer_blocks": {"background_blocks": ["1-2"], "refresh_steps": [0, 1, 4]},
    }}))
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = run_cli(["--model-base", diffusers, "--video-size", "30", "40", "--video-length", "1", "--infer-steps", "8",
                    "--prompt", "  a blue/green circle ", "--seed", "7", "--num-videos", "2", "--cfg-scale", "2",
                    "--save-path-suffix", "run2", "--cache_schedule", schedule], cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--flow-reverse not given" in proc.stderr
    # per branch: 2 + 4 blocks x 8 steps = 48; computed 8 + 3 (double) + 2*8 + 2*3 (single) = 33
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("denoising time:")]
    assert len(summaries) == 2
    assert all("computed 66/96 block evaluations (cond 33/48, uncond 33/48)" in line for line in summaries)
    names = sorted(p.name for p in (workdir / "results_run2").iterdir())
    assert len(names) == 2 and [p.name for p in workdir.iterdir()] == ["results_run2"]
    for name, seed in zip(names, (7, 8)):
        assert re.fullmatch(upstream_name(seed, "a bluegreen circle"), name), name
        assert read_video(workdir / "results_run2" / name).shape == (1, 32, 48, 3)  # sizes rounded up to 16


FAST_BAD_INPUTS = [  # rejected before torch is imported
    (["--video-size", "64"], r"--video-size takes two values, HEIGHT WIDTH .*got 1"),
    (["--video-length", "6"], r"--video-length must be 4n\+1"),
    (["--batch-size", "2"], r"--batch-size must be 1"),
    (["--ulysses-degree", "2"], r"= 2 must equal the number of processes; launch with torchrun --nproc_per_node=2"),
    (["--ring-degree", "2"], r"--ring-degree > 1 is not supported: diffusers' ring attention cannot hold"),
    (["--text-encoder", "clipL"], r"--text-encoder/--tokenizer other than 'llm' is not supported"),
    (["--text-encoder-2", "llm"], r"--text-encoder-2/--tokenizer-2 other than 'clipL' is not supported"),
    (["--flow-solver", "heun"], r"--flow-solver heun is not supported"),
    (["--latent-channels", "32"], r"--latent-channels 32 must match the VAE channels \(16\)"),
    (["--precision", "int8"], r"invalid choice: 'int8'"),
    (["--model-base", "nowhere"], r"--model-base nowhere: no such folder"),
    (["--infer-steps", "0"], r"--infer-steps must be positive"),
    (["--embedded-cfg-scale", "nan"], r"--embedded-cfg-scale: must be a finite number at least 0, got nan"),
    (["--flow-shift", "0"], r"--flow-shift: must be a finite number above 0, got 0"),
    (["--seed", "18446744073709551615", "--num-videos", "2"], r"--seed 18446744073709551615 is out of range: .*2 "
                                                                r"videos use 2 consecutive seeds"),
]
SLOW_BAD_INPUTS = [  # rejected after loading torch (and the checkpoint)
    (["--dit-weight", "missing.pt"], r"HunyuanVideo transformer weights not found: missing.pt"),
    (["--cache_schedule", "no-such-preset"], r"unknown schedule preset"),
]


def _bad_input_args(ckpt, args):
    return ["--model-base", ckpt, "--dit-weight", ckpt / DIT_WEIGHT, "--video-size", "32", "32", "--video-length",
            "5", "--infer-steps", "2", "--prompt", PROMPT, "--flow-reverse", *args]


@pytest.mark.parametrize("args, message", FAST_BAD_INPUTS + SLOW_BAD_INPUTS)
def test_bad_input_gives_one_line(ckpt, tmp_path, args, message):
    proc = run_cli(_bad_input_args(ckpt, args), cwd=tmp_path, env={"MODEL_BASE": str(ckpt)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "| INFO" not in line
             and "Loading weights" not in line]
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def sample_video():
    """The front end's module, for errors raised after the heavy imports (in-process: no 5 s start-up each);
    `run_cli` turns any UserInputError into one line and exit code 2, as the subprocess cases show."""
    return load_script(SAMPLE_VIDEO)


def _write_malformed(path):
    path.write_text('{"format_version": 1, "num_steps": 50, "block_lists": ')
    return path


@pytest.mark.parametrize("args, message", [
    (["--use-fp8"], r"fp8 scale map for --use-fp8 not found: .*mp_rank_00_model_states_map.pt"),
    (["--model", "HYVideo-T/2"], r"--model HYVideo-T/2 does not match .* which has a guidance embedder"),
    (["--cache_schedule", "wan2.1-t2v-14b"], r"'blocks'"),
    (["--cache_schedule", "MALFORMED"], r"not valid JSON"),
    (["--hidden-state-skip-layer", "5"], r"--hidden-state-skip-layer 5 exceeds the text encoder's 3 layers"),
])
def test_bad_input_after_loading_is_a_user_error(sample_video, ckpt, tmp_path, monkeypatch, args, message):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MODEL_BASE", str(ckpt))
    args = [str(_write_malformed(tmp_path / "malformed.json")) if a == "MALFORMED" else a for a in args]
    with pytest.raises(UserInputError, match=message):
        sample_video.main(list(map(str, _bad_input_args(ckpt, args))))
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--model", "HYVideo-T/2"], r"--model HYVideo-T/2 does not match .* which has a guidance embedder"),
    (["--hidden-state-skip-layer", "5"], r"--hidden-state-skip-layer 5 exceeds the text encoder's 3 layers"),
])
def test_model_flags_that_do_not_fit_the_files_are_refused_before_loading(sample_video, ckpt, tmp_path, monkeypatch,
                                                                          args, message):
    from delta_cache.models.hunyuan_video import checkpoint

    def no_loading(*_, **__):
        raise AssertionError("the weights were loaded")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_BASE", str(ckpt))
    monkeypatch.setattr(checkpoint, "load_hunyuan_video_components", no_loading)
    with pytest.raises(UserInputError, match=message):
        sample_video.main(list(map(str, _bad_input_args(ckpt, args))))


def test_vae_and_text_encoders_come_from_model_base_env(sample_video, ckpt, tmp_path, monkeypatch):
    # --model-base must only exist; without $MODEL_BASE the VAE is looked up in ./ckpts (the working directory).
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODEL_BASE", raising=False)
    with pytest.raises(UserInputError, match=r"the VAE and text encoders are read from \$MODEL_BASE \(default "
                                             r"./ckpts\), as upstream does, and ckpts is no folder: set MODEL_BASE"):
        sample_video.main(list(map(str, _bad_input_args(ckpt, []))))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("MODEL_BASE", str(tmp_path / "elsewhere"))
    with pytest.raises(UserInputError, match="elsewhere/hunyuan-video-t2v-720p/vae/config.json"):
        sample_video.main(list(map(str, _bad_input_args(ckpt, []))))
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"] and not list((tmp_path / "elsewhere").iterdir())


def test_a_schedule_that_does_not_fit_is_refused_before_loading(sample_video, small, tmp_path, monkeypatch):
    """The depths come from the weights file's key names (memory-mapped) or a diffusers folder's config: a
    real model's load takes minutes."""
    from delta_cache.models.hunyuan_video import checkpoint

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the schedule was checked")

    monkeypatch.setattr(checkpoint, "load_hunyuan_video_components", no_loading)
    monkeypatch.chdir(tmp_path)
    upstream, diffusers_folder = small
    cases = [(upstream, upstream / DIT_WEIGHT, "hunyuanvideo-720p", "made for 20 blocks in 'transformer_blocks', "
                                                                    "but this model has 2"),
             (diffusers_folder, diffusers_folder, "hunyuanvideo-720p", "but this model has 2"),
             (upstream, upstream / DIT_WEIGHT, "wan2.1-t2v-14b", "names block list 'blocks', which this model does "
                                                                 "not have")]
    for model_base, dit_weight, schedule, message in cases:
        monkeypatch.setenv("MODEL_BASE", str(model_base))
        args = _bad_input_args(model_base, ["--cache_schedule", schedule])
        args[args.index("--dit-weight") + 1] = dit_weight
        with pytest.raises(UserInputError, match=message):
            sample_video.main(list(map(str, args)))
    assert list(tmp_path.iterdir()) == []
