"""Wan2.1 VACE (vace-1.3B, vace-14B): loading both layouts, the source-video inputs, the front end, and the
delta cache on a transformer that adds control hints between its blocks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from diffusers.models.transformers.transformer_wan_vace import WanVACETransformerBlock
from PIL import Image

from delta_cache import hooks
from delta_cache.errors import CheckpointError, UserInputError
from delta_cache.hooks import apply_delta_cache
from delta_cache.models.wan import keys, tasks
from delta_cache.models.wan.checkpoint import load_wan_components
from delta_cache.models.wan.inputs import VaceInputs
from delta_cache.models.wan.pipeline import build_pipeline, generate
from delta_cache.models.wan.tiny import build_tiny_modules, write_tiny_checkpoint
from delta_cache.schedule import Schedule, load_schedule
from delta_cache.video import read_video, save_video
from block_calls import count_block_calls
from script_loader import load_script

GENERATE = Path(__file__).resolve().parent.parent / "Wan2.1" / "generate.py"


@pytest.fixture(scope="module")
def vace_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vace")
    # 10 blocks: control hints after blocks 0 and 5 (every fifth, as the 14B model)
    return {layout: write_tiny_checkpoint(root / layout, layout=layout, num_layers=10, seed=4, vace=True)
            for layout in ("upstream", "diffusers")}


def test_both_layouts_load_the_same_vace_transformer(vace_ckpts):
    upstream = load_wan_components(vace_ckpts["upstream"], task="vace-14B").transformer
    diffusers_layout = load_wan_components(vace_ckpts["diffusers"], task="vace-1.3B").transformer
    assert upstream.config.vace_layers == [0, 5] and upstream.config.vace_in_channels == 96
    assert len(upstream.vace_blocks) == 2 and upstream.vace_blocks[0].proj_in is not None
    a, b = upstream.state_dict(), diffusers_layout.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # upstream names: the control blocks' projections are before_proj / after_proj; the round trip is exact
    upstream_keys = keys.transformer_to_upstream(a)
    assert {"vace_blocks.0.before_proj.weight", "vace_blocks.1.after_proj.weight", "head.head.weight"} <= set(upstream_keys)
    assert not any(".proj_in." in k or ".proj_out." in k for k in upstream_keys)
    assert keys.transformer_from_upstream(upstream_keys).keys() == a.keys()


def test_vace_checkpoint_checks(vace_ckpts, tmp_path):
    with pytest.raises(CheckpointError, match="holds a VACE model .*does not fit --task t2v-14B"):
        load_wan_components(vace_ckpts["upstream"], task="t2v-14B")
    with pytest.raises(CheckpointError, match="holds a VACE model .*does not fit --task t2v-1.3B"):
        load_wan_components(vace_ckpts["diffusers"], task="t2v-1.3B")
    config_path = vace_ckpts["upstream"] / keys.CONFIG_FILE
    original = json.loads(config_path.read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in vace_ckpts["upstream"].iterdir():
        if item.name != keys.CONFIG_FILE:
            (broken / item.name).symlink_to(item)
    cases = [
        ({"vace_layers": [0, 5, 9]}, "vace_layers names 3 blocks but it has 2 VACE blocks"),
        # without vace_layers, upstream's default (every second block: 5 of 10) does not fit 2 control blocks
        ({"vace_layers": None}, "vace_layers names 5 blocks but it has 2 VACE blocks"),
        ({"vace_layers": [5, 0]}, "vace_layers must be increasing block indices from 0"),
        ({"vace_layers": [0, 10]}, "vace_layers must be increasing block indices from 0 below num_layers"),
        ({"vace_in_dim": 48}, "vace_in_dim=48 but vace_patch_embedding.weight takes 96 channels"),
    ]
    for change, message in cases:
        config = {**original, **change}
        config = {k: v for k, v in config.items() if v is not None}
        (broken / keys.CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=message):
            load_wan_components(broken, task="vace-14B")


def test_vace_source_shape_follows_upstream():
    # whole 81-frame clips at the sizes' own aspect ratios keep them
    assert tasks.vace_source_shape(81, 1280, 720, "1280*720", 81) == (81, 1280, 720)
    assert tasks.vace_source_shape(81, 832, 480, "832*480", 81) == (81, 832, 480)
    # a 1080p clip at the 480p area: 16:9 at 1560 tokens (30 x 52) -> 832x480; a long clip gives 81 frames
    assert tasks.vace_source_shape(500, 1920, 1080, "832*480", 81) == (81, 832, 480)
    # a short 4:3 clip smaller than the area keeps its size and its 4n+1 frames
    assert tasks.vace_source_shape(30, 640, 480, "832*480", 81) == (29, 640, 480)
    for frames, width, height, size in [(81, 1000, 321, "1280*720"), (40, 333, 500, "832*480"),
                                        (200, 3840, 2160, "1280*720"), (7, 160, 96, "832*480")]:
        out_frames, out_w, out_h = tasks.vace_source_shape(frames, width, height, size, 81)
        size_w, size_h = tasks.parse_size(size)
        assert out_w % 16 == 0 and out_h % 16 == 0 and out_w * out_h <= size_w * size_h
        assert (out_frames - 1) % 4 == 0 and out_frames <= frames
        assert abs(out_h / out_w - height / width) < 0.15 * height / width
    # the budget is --frame_num frames at the area of --size (upstream: 81): a smaller source gets more frames,
    # 300 tokens a frame of the 1560-token area's 21 x 1560 budget -> 75 latent frames (upstream gives 297 too)
    assert tasks.vace_source_shape(300, 320, 240, "832*480", 81) == (297, 320, 240)
    assert tasks.vace_source_shape(500, 1280, 720, "1280*720", 41)[0] == 41


def _source_files(folder: Path):
    """A 12-frame 160x96 source video (a red box moving right), its mask (right half to generate) and a
    green reference image."""
    frames = np.zeros((12, 96, 160, 3), np.float32)
    for i in range(12):
        frames[i, 20:50, 10 + 5 * i:40 + 5 * i] = (0.8, 0.15, 0.15)
    mask = np.zeros_like(frames)
    mask[:, :, 80:] = 1.0
    save_video(frames, folder / "src.mp4", fps=16)
    save_video(mask, folder / "mask.mp4", fps=16)
    Image.new("RGB", (40, 80), (30, 200, 30)).save(folder / "ref.png")
    return folder / "src.mp4", folder / "mask.mp4", folder / "ref.png"


def _with_native_size(ckpt: Path, folder: Path) -> Path:
    """`ckpt` linked into `folder` with a tiny_model.json, so that the front ends run it at 64x48, 5 frames."""
    folder.mkdir()
    for item in ckpt.iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    return folder


def test_vace_front_end_with_source_video_mask_and_reference(vace_ckpts, tmp_path, capsys, monkeypatch):
    calls = count_block_calls(monkeypatch, main=WanTransformerBlock, control=WanVACETransformerBlock)
    ckpt = _with_native_size(vace_ckpts["upstream"], tmp_path / "ckpt")
    src, mask, ref = _source_files(tmp_path)
    # blocks 3-7 reused on steps 2 and 3; the run is cut after block 5, where a control hint is added
    schedule = tmp_path / "ten_blocks.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 4, "block_lists": {
        "blocks": {"num_blocks": 10, "background_blocks": ["3-7"], "refresh_steps": [0, 1]}}}))
    out = tmp_path / "vace.mp4"
    load_script(GENERATE).main([*map(str, ["--task", "vace-14B", "--ckpt_dir", ckpt, "--src_video", src,
                                           "--src_mask", mask, "--src_ref_images", ref, "--sample_steps", "4",
                                           "--base_seed", "1", "--cache_schedule", schedule, "--save_file", out])])
    # 4 steps x 2 branches x 10 blocks = 80 main block calls less 5 blocks x 2 steps x 2 branches reused
    assert calls == {"main": 60, "control": 4 * 2 * 2}
    # the summary adds the control blocks, which always run: (80 + 16) / (60 + 16)
    summary = capsys.readouterr().out
    assert "computed 60/80 block evaluations" in summary
    assert "ideal speedup 1.33x (1.26x with the 16 VACE control block evaluations)" in summary
    # the 12-frame 160x96 source at the area of 64*48 with at most 5 frames: 5 frames of 64x48 (the reference
    # image's latent frame is dropped before decoding)
    assert read_video(out).shape == (5, 48, 64, 3)


def test_vace_cache_off_is_bit_identical_to_plain_diffusers(vace_ckpts, tmp_path):
    components = load_wan_components(vace_ckpts["diffusers"], task="vace-14B")
    pipe = build_pipeline(components, image_to_video=False, solver="unipc", shift=16.0)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    video = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(5)]
    mask = [Image.new("RGB", (64, 48), (255, 255, 255) if i % 2 else (0, 0, 0)) for i in range(5)]
    reference = Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    inputs = dict(negative_prompt=tasks.negative_prompt("vace-14B"), width=64, height=48, num_frames=5,
                  num_inference_steps=4, guidance_scale=5.0)
    ours = generate(pipe, prompt="a cat moves right", seed=3, **inputs,
                    vace=VaceInputs(width=64, height=48, num_frames=5, video=video, mask=mask,
                                    reference_images=[reference]))
    plain = pipe(prompt="a cat moves right", video=video, mask=mask, reference_images=[reference], output_type="np",
                 generator=torch.Generator("cpu").manual_seed(3), **inputs).frames[0]
    np.testing.assert_array_equal(ours.frames, plain)
    assert ours.frames.shape == (5, 48, 64, 3)


@pytest.mark.parametrize("delta_options, vace_layers", [
    ({}, None),  # the tiny model's: hints after blocks 0 and 5
    ({"delta_dtype": torch.float64, "delta_device": "cpu"}, None),
    ({}, [0, 3, 4, 5, 7, 8]),  # several hint points inside the run, two after its first block, one after its last
])
def test_reused_runs_leave_the_control_hints_out_of_their_deltas(monkeypatch, delta_options, vace_layers):
    # Two calls with identical inputs: the second reuses blocks 3-7, so it must give exactly the uncached
    # output. The model adds block 5's control hint after block 5 on every call, also when blocks 3-7 are
    # skipped: a delta that kept the first call's hint would add it twice.
    transformer = build_tiny_modules(num_layers=10, vace=True, seed=1)["transformer"]
    if vace_layers is not None:
        from diffusers import WanVACETransformer3DModel

        torch.manual_seed(1)
        transformer = WanVACETransformer3DModel.from_config({**transformer.config, "vace_layers": vace_layers}).eval()
        for param in transformer.parameters():  # away from the default init's zeros, as the tiny models
            param.data.add_(0.05 * torch.randn_like(param))
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=generator),
                  timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 6, 32, generator=generator),
                  control_hidden_states=torch.randn(1, 96, 2, 4, 4, generator=generator), return_dict=False)
    with torch.no_grad():
        expected = transformer(**inputs)[0]
    schedule = Schedule.from_dict({"format_version": 1, "num_steps": 2, "block_lists": {
        "blocks": {"num_blocks": 10, "background_blocks": ["3-7"], "refresh_steps": [0]}}})

    def second_call_output():
        handle = apply_delta_cache(transformer, schedule, **delta_options)
        with torch.no_grad():  # (two steps of one run at the same timestep: the step index says so)
            with transformer.cache_context("cond", step_index=0, num_inference_steps=2):
                transformer(**inputs)
            with transformer.cache_context("cond", step_index=1, num_inference_steps=2):
                output = transformer(**inputs)[0]
        stats = handle.stats()
        assert stats["computed_block_evals"] == 20 - 5 and stats["total_block_evals"] == 20  # the second call reused
        handle.remove()
        return output

    torch.testing.assert_close(second_call_output(), expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(hooks, "additions_between_blocks", lambda transformer: {})  # the hint left in the delta
    assert (second_call_output() - expected).abs().max() > 1e-3


def test_profile_a_vace_model_on_its_source_video_and_reference_image(vace_ckpts, tmp_path, capsys, monkeypatch):
    # scripts/profile_model.py on the front end's VACE inputs; the schedule it writes drives generate.py.
    from delta_cache.profiling.probe import ProfileProbe
    from delta_cache.profiling.profile import PromptProfile

    seen = []  # (first video token, video tokens, the self-attention's sequence length) per captured block
    received = ProfileProbe._received_attention
    monkeypatch.setattr(ProfileProbe, "_received_attention", lambda self, query, *rest: (
        seen.append((self._first_video_token, self.num_video_tokens, query.shape[-2])),
        received(self, query, *rest))[1])
    src, mask, ref = _source_files(tmp_path)
    ckpt = _with_native_size(vace_ckpts["upstream"], tmp_path / "ckpt")
    out = tmp_path / "profile"
    common = ["--task", "vace-14B", "--ckpt_dir", str(ckpt), "--sample_steps", "6"]
    profile_model = load_script(Path(__file__).resolve().parent.parent / "scripts" / "profile_model.py")
    profile_model.main([*common, "--src_video", str(src), "--src_mask", str(mask), "--src_ref_images", str(ref),
                        "--prompt", "a red box moves right", "--tau", "1.0", "--t_max", "2", "--t_min", "2",
                        "--warmup", "2", "--max_queries", "8", "--out", str(out)])
    # the reference image's latent frame comes first in the blocks' sequence: the probe reads the 2 x 3 x 4
    # video tokens after its 12 tokens
    assert seen and set(seen) == {(12, 24, 36)}
    profile = PromptProfile.load(out / "profiles" / "000.npz")
    assert profile.token_grid == (2, 3, 4) and profile.foreground_ratio["blocks"].shape == (6, 10)
    schedule = load_schedule(out / "schedule.json")
    assert schedule.name == "profiled-vace-14b" and schedule.provenance["src_ref_images"] == str(ref)
    assert schedule.provenance["output_size"] == "64*48"
    assert schedule.provenance["always_computed_block_evals"] == {"vace_blocks": 2 * 6}
    computed, total = schedule.provenance["predicted_block_evals"]
    assert total == 60 and computed < total  # every block background (tau 1), steps 2 and 4 reused
    whole = f"{(total + 12) / (computed + 12):.2f}x with the 12 evaluations of vace_blocks"
    assert whole in capsys.readouterr().out and whole in (out / "summary.md").read_text()
    calls = count_block_calls(monkeypatch, main=WanTransformerBlock, control=WanVACETransformerBlock)
    load_script(GENERATE).main([*common, "--src_video", str(src), "--src_mask", str(mask), "--src_ref_images",
                                str(ref), "--base_seed", "1", "--cache_schedule", str(out / "schedule.json"),
                                "--save_file", str(tmp_path / "v.mp4")])
    assert calls == {"main": 2 * computed, "control": 2 * 12}
    with pytest.raises(UserInputError, match="--src_video is for the vace tasks"):
        profile_model.main(["--task", "t2v-14B", "--ckpt_dir", str(ckpt), "--src_video", str(src), "--prompt", "x",
                            "--out", str(tmp_path / "bad")])
    with pytest.raises(UserInputError, match="--src_mask needs --src_video"):
        profile_model.main([*common, "--src_mask", str(mask), "--prompt", "x", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_vace_input_errors(vace_ckpts, tmp_path):
    generate_py = load_script(GENERATE)
    src, mask, ref = _source_files(tmp_path)
    base = ["--task", "vace-14B", "--size", "832*480", "--frame_num", "5", "--ckpt_dir", str(vace_ckpts["upstream"])]
    with pytest.raises(UserInputError, match="--src_video is for the vace tasks .*not --task t2v-14B"):
        generate_py.main(["--task", "t2v-14B", "--size", "832*480", "--ckpt_dir", str(vace_ckpts["upstream"]),
                          "--src_video", str(src)])
    with pytest.raises(UserInputError, match="--src_ref_images .*nope.png: no such file"):
        generate_py.main(base + ["--src_ref_images", f"{ref},{tmp_path / 'nope.png'}"])
    with pytest.raises(UserInputError, match="--src_ref_images names no file"):
        generate_py.main(base + ["--src_ref_images", " , "])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video")
    with pytest.raises(UserInputError, match="--src_video .*garbage.mp4: not a readable video"):
        generate_py.main(base + ["--src_video", str(garbage)])
    small_mask = tmp_path / "small_mask.mp4"
    save_video(np.ones((12, 48, 80, 3), np.float32), small_mask, fps=16)
    with pytest.raises(UserInputError, match="--src_mask .*small_mask.mp4: its frames are 80x48, the source video's 160x96"):
        generate_py.main(base + ["--src_video", str(src), "--src_mask", str(small_mask)])
    # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.mp4", "mask.mp4", "ref.png", "small_mask.mp4",
                                                          "src.mp4"]


@pytest.mark.parametrize("dim, ffn, heads, layers, every", [(1536, 8960, 12, 30, 2), (5120, 13824, 40, 40, 5)])
def test_released_vace_transformer_dims_at_real_size(dim, ffn, heads, layers, every):
    # The released VACE-1.3B (15 control blocks) and VACE-14B (8), from upstream config.json facts; their upstream
    # tensor names and shapes come from a meta WanVACETransformer3DModel through our inverse mapping.
    from accelerate import init_empty_weights
    from diffusers import WanVACETransformer3DModel

    from delta_cache.models.wan import checkpoint

    vace_layers = list(range(0, layers, every))
    released = dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn, num_layers=layers, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                    pos_embed_seq_len=None, rope_max_seq_len=1024, vace_layers=vace_layers, vace_in_channels=96)
    with init_empty_weights():
        model = WanVACETransformer3DModel(**released)
    shapes = {k: tuple(v.shape) for k, v in keys.transformer_to_upstream(model.state_dict()).items()}
    assert [k for k in shapes if "before_proj.weight" in k] == ["vace_blocks.0.before_proj.weight"]
    assert len([k for k in shapes if k.endswith("after_proj.weight")]) == len(vace_layers)
    upstream_config = {"model_type": "vace", "dim": dim, "ffn_dim": ffn, "freq_dim": 256, "in_dim": 16,
                       "num_heads": heads, "num_layers": layers, "out_dim": 16, "text_len": 512, "eps": 1e-6,
                       "vace_layers": vace_layers, "vace_in_dim": 96}
    derived = checkpoint._upstream_transformer_config(upstream_config, shapes, Path("config.json"),
                                                      Path("diffusion_pytorch_model.safetensors"))
    assert derived == released
