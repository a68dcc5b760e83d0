"""The delta cache and the profiler on diffusers video pipelines the front ends do not build: CogVideoX,
LTX-Video, Mochi (which batch [negative prompt, prompt] in one call and give no step index), Wan 2.2's two
experts, `profile_pipeline` on each family and `profile_experts` on Wan 2.2."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import tiny_video_pipelines as tvp
from block_calls import count_block_calls
import delta_cache
from delta_cache.errors import UserInputError
from delta_cache.profiling.derive import derive_for_target
from delta_cache.profiling.pipelines import profile_pipeline
from delta_cache.profiling.report import write_report
from delta_cache.schedule import BlockListSchedule, Schedule

STEPS = 6
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _block_class(family: str):
    import diffusers.models.transformers as transformers

    return {"cogvideox": transformers.cogvideox_transformer_3d.CogVideoXBlock,
            "ltx_video": transformers.transformer_ltx.LTXVideoTransformerBlock,
            "mochi": transformers.transformer_mochi.MochiTransformerBlock,
            "wan": transformers.transformer_wan.WanTransformerBlock,
            "wan22": transformers.transformer_wan.WanTransformerBlock,
            "skyreels_v2": transformers.transformer_skyreels_v2.SkyReelsV2TransformerBlock,
            "hunyuan_video15": transformers.transformer_hunyuan_video15.HunyuanVideo15TransformerBlock}[family]


def _run(pipe, kwargs, steps=STEPS, **extra):
    arguments = {**kwargs, **extra}
    return pipe(prompt=tvp.PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np", **arguments).frames[0]


def _transformers(pipe):
    return [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]


def _schedule(list_name, depth, refresh):
    return Schedule(name="test", num_steps=STEPS,
                    block_lists={list_name: BlockListSchedule(tuple(range(1, depth - 1)), tuple(refresh), depth)})


@pytest.mark.parametrize("family", ["cogvideox", "ltx_video", "mochi", "wan22", "skyreels_v2"])
def test_delta_cache_on_other_families(family, monkeypatch):
    calls = count_block_calls(monkeypatch, blocks=_block_class(family))
    pipe, list_name, depth, kwargs = getattr(tvp, family)()
    plain = _run(pipe, kwargs)

    # every step a refresh step: the cache changes nothing, to the bit
    for transformer in _transformers(pipe):
        delta_cache.apply_delta_cache(transformer, _schedule(list_name, depth, range(STEPS)))
    assert np.array_equal(_run(pipe, kwargs), plain)
    for transformer in _transformers(pipe):
        delta_cache.remove_delta_cache(transformer)

    refresh = (0, 1, 3, 5)
    handles = [delta_cache.apply_delta_cache(t, _schedule(list_name, depth, refresh)) for t in _transformers(pipe)]
    calls["blocks"] = 0
    cached = _run(pipe, kwargs)
    computed = sum(h.stats()["computed_block_evals"] for h in handles)
    assert calls["blocks"] == computed  # the cache's count is the blocks that really ran
    if family == "wan22":  # two branches a step; each expert computes its first step, whatever the schedule
        for handle in handles:
            stats = handle.stats()
            assert set(stats["branches"]) == {"cond", "uncond"}
            assert stats["computed_block_evals"] < stats["total_block_evals"]
    elif family == "skyreels_v2":  # two named branches a step, counted without a step index
        assert set(handles[0].stats()["branches"]) == {"cond", "uncond"}
        assert computed == 2 * (STEPS * depth - (STEPS - len(refresh)) * (depth - 2))
    else:  # one batched call a step, counted without a step index from the pipeline
        assert set(handles[0].stats()["branches"]) == {"cond_uncond"}
        assert computed == STEPS * depth - (STEPS - len(refresh)) * (depth - 2)
    assert np.isfinite(cached).all() and not np.array_equal(cached, plain)

    for transformer in _transformers(pipe):
        delta_cache.remove_delta_cache(transformer)
    assert np.array_equal(_run(pipe, kwargs), plain)


# ---- profile_pipeline ---------------------------------------------------------------------------------
# (frames, height, width) of the video tokens at each builder's size, and whether the self-attention puts
# the text in front of the video (CogVideoX) or after it (Mochi), or attends over the video alone
TOKEN_GRIDS = {"cogvideox": (3, 4, 4), "cogvideox15": (2, 4, 4), "cogvideox_i2v": (3, 4, 4), "ltx_video": (3, 8, 8),
               "mochi": (3, 4, 4), "wan": (3, 4, 4), "wan_video_to_video": (3, 4, 4), "hunyuan_video": (3, 4, 4),
               "skyreels_v2": (3, 4, 4)}
TEXT_FIRST = {"cogvideox": True, "cogvideox15": True, "cogvideox_i2v": True, "ltx_video": False, "mochi": False,
              "wan": False, "wan_video_to_video": False, "hunyuan_video": False, "skyreels_v2": False}
BATCHED = ("cogvideox", "cogvideox15", "cogvideox_i2v", "ltx_video", "mochi")  # [negative prompt, prompt] in one call


class _FirstAttention(TorchFunctionMode):
    """Keeps (query, key, mask, scale) of the first attention call made while `block` runs for the first time."""

    def __init__(self, block):
        super().__init__()
        self.inside, self.captured = False, None
        block.register_forward_pre_hook(lambda *_: setattr(self, "inside", self.captured is None))
        block.register_forward_hook(lambda *_: setattr(self, "inside", False))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.inside and self.captured is None:
            named = dict(zip(("query", "key", "value", "attn_mask"), args), **kwargs)
            self.captured = (named["query"], named["key"], named.get("attn_mask"), named.get("scale"))
        return func(*args, **kwargs)


def _high_attention_tokens(query, key, mask, scale, grid, text_first, fraction=0.25):
    """The top `fraction` of each frame's video tokens by the attention they receive from every video token
    (mean over heads), from one sample's query and key: what the profiler should find."""
    tokens = int(np.prod(grid))
    video = slice(key.shape[-2] - tokens, None) if text_first else slice(0, tokens)
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    logits = query[0, :, video].float() @ key[0].float().transpose(-1, -2) * scale
    if mask is not None:  # (HunyuanVideo: the text's padding)
        mask = mask[0, :, video] if mask.shape[-2] == query.shape[-2] else mask[0]
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    weights = logits.softmax(dim=-1)
    received = weights.sum(dim=(0, 1))[video].reshape(grid[0], -1)
    count = round(fraction * received.shape[1])
    top = torch.zeros_like(received, dtype=torch.bool).scatter_(1, received.topk(count, dim=1).indices, True)
    return top.reshape(grid).numpy()


@pytest.mark.parametrize("family", ["cogvideox", "cogvideox15", "cogvideox_i2v", "ltx_video", "mochi", "wan",
                                    "wan_video_to_video", "hunyuan_video", "skyreels_v2"])
def test_profile_pipeline_finds_the_video_tokens(family, tmp_path):
    """The profiler reads the prompt's video tokens in each family: the high-attention tokens it records in the
    last block at step 0 of a guided run are those of the prompt's run alone (where the video sits in the
    attention), and so are the residuals it records at step 0 (which sample or call of the batch is the prompt's)."""
    pipe, list_name, depth, kwargs = getattr(tvp, family)()
    grid = TOKEN_GRIDS[family]
    last_block = getattr(pipe.transformer, list_name)[-1]
    alone = {k: v for k, v in kwargs.items() if k != "negative_prompt"}  # the prompt alone: a batch of one
    if family in BATCHED or family.startswith(("wan", "skyreels")):
        alone["guidance_scale"] = 1.0
    with _FirstAttention(last_block) as capture:
        _run(pipe, alone, steps=2)
    assert capture.captured[0].shape[0] == 1
    expected = _high_attention_tokens(*capture.captured, grid, TEXT_FIRST[family])
    np.save(tmp_path / "000.npy", expected)

    def profile(**arguments):
        return profile_pipeline(pipe, [tvp.PROMPT], seeds=[0], mask_source="files", mask_files=[tmp_path / "000.npy"],
                                max_queries=10_000, num_inference_steps=2, **arguments).prompts[0]

    guided = profile(**kwargs)
    assert guided.token_grid == grid
    ratio = guided.foreground_ratio[list_name]
    assert ratio.shape == (2, depth)
    assert ratio[0, -1] >= 0.9  # (1.0 but for near-ties between the batched and the single run)
    # the negative prompt's residuals differ from the prompt's by far more than this (its text differs)
    np.testing.assert_allclose(guided.sketches[list_name][0], profile(**alone).sketches[list_name][0],
                               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mask_source", ["video_motion", "motion"])
@pytest.mark.parametrize("family", ["cogvideox15", "ltx_video", "mochi"])
def test_profile_pipeline_motion_masks_on_the_token_grid(family, mask_source):
    """The decoded video (default) or the final latents reach the motion mask on the token grid: CogVideoX 1.5's
    two latent frames per token, LTX-Video's packed tokens and 8 video frames per token frame, Mochi's
    channels-first latents and 6 video frames per token frame."""
    pipe, list_name, depth, kwargs = getattr(tvp, family)()
    profile = profile_pipeline(pipe, [tvp.PROMPT], num_inference_steps=3, mask_source=mask_source, **kwargs)
    assert profile.provenance["mask_source"] == mask_source
    mask = profile.prompts[0].mask
    assert mask.shape == TOKEN_GRIDS[family] and 0 < mask.sum() < mask.size


def test_profile_pipeline_derives_a_schedule_that_runs(tmp_path, monkeypatch):
    """Profile -> schedule at a target speedup -> report -> the cache on the same pipeline computes exactly
    the planned block evaluations; the saved profiles are reused on resume."""
    calls = count_block_calls(monkeypatch, blocks=_block_class("cogvideox"))
    pipe, list_name, depth, kwargs = tvp.cogvideox()
    prompts = [tvp.PROMPT, "a blue circle moves up"]
    profile = profile_pipeline(pipe, prompts, seeds=np.arange(1), out_dir=tmp_path, num_inference_steps=10, **kwargs)
    assert profile.num_steps == 10 and profile.depths == {list_name: depth}
    assert profile.prompts[0].mask.any()  # the motion mask of the final latents found something
    assert profile.provenance["pipeline"] == "CogVideoXPipeline" and profile.provenance["guidance_scale"] == 6.0
    assert sorted(p.name for p in (tmp_path / "profiles").glob("*.npz")) == ["000.npz", "001.npz"]

    calls["blocks"] = 0
    again = profile_pipeline(pipe, prompts, seeds=[0], out_dir=tmp_path, resume=True, num_inference_steps=10, **kwargs)
    assert calls["blocks"] == 0  # nothing generated again
    assert np.array_equal(again.foreground_ratio(list_name), profile.foreground_ratio(list_name))

    schedule = derive_for_target(profile, 1.5, name="cogvideox-tiny")
    # judged on the profile it came from, a schedule is matched or beaten by the search at its own compute (it is
    # one of the candidates there), and one that holds its deltas through one long gap is beaten
    from delta_cache.profiling.derive import compare_on_profile

    itself = compare_on_profile(profile, schedule)
    assert (itself.computed, itself.total) == tuple(schedule.provenance["predicted_block_evals"])
    assert itself.profiled.provenance["predicted_error"] <= itself.predicted_error + 1e-6  # (rounded to 6 places)
    assert itself.profiled.provenance["predicted_block_evals"][0] <= itself.computed  # (never more compute)
    refreshes = schedule.block_lists[list_name].refresh_steps
    late = Schedule(  # the same blocks and compute: the refreshes first, then one long gap
        name="late", num_steps=10, block_lists={list_name: BlockListSchedule(
        schedule.block_lists[list_name].background_blocks, tuple([*range(len(refreshes) - 1), 9]), depth)})
    judged = compare_on_profile(profile, late)
    assert judged.computed == itself.computed
    assert judged.profiled.provenance["predicted_error"] < judged.predicted_error, judged.line
    assert 0.95 * judged.computed <= judged.profiled.provenance["predicted_block_evals"][0] <= judged.computed
    # one that reuses almost nothing: the search may not answer with a schedule that reuses nothing (error 0)
    light = compare_on_profile(profile, Schedule(name="light", num_steps=10, block_lists={
        list_name: BlockListSchedule((2,), tuple(range(9)), depth)}))
    assert light.profiled is None or light.profiled.provenance["predicted_block_evals"][0] <= light.computed
    # with the linear forecast, it is compared with linear schedules; a schedule made for another step count is
    # counted as the cache runs it at the profile's (counted here with the real cache)
    linear = compare_on_profile(profile, Schedule(name="twenty", num_steps=20, forecast="linear", block_lists={
        list_name: BlockListSchedule(tuple(range(1, depth - 1)), (0, 1, 2, 6, 10, 14, 18), depth)}))
    assert linear.profiled.forecast == "linear" and "made for 20 steps, run at 10" in linear.line
    handle = delta_cache.apply_delta_cache(pipe.transformer, Schedule(  # (CogVideoX does not say its step count)
        name="twenty", num_steps=20, forecast="linear",
        block_lists={list_name: BlockListSchedule(tuple(range(1, depth - 1)), (0, 1, 2, 6, 10, 14, 18), depth)}),
        num_inference_steps=10)
    calls["blocks"] = 0
    _run(pipe, kwargs, steps=10)
    handle.remove()
    assert calls["blocks"] == linear.computed < linear.total
    written = write_report(profile, schedule, tmp_path / "report", [itself, judged])
    assert judged.line in written[-1].read_text()
    assert all(path.is_file() for path in written)
    schedule.save(tmp_path / "schedule.json")
    saved = json.loads((tmp_path / "schedule.json").read_text())["provenance"]  # (numpy seeds as integers)
    assert saved["model"] == "CogVideoXTransformer3DModel" and saved["seeds"] == [0]

    handle = delta_cache.apply_delta_cache(pipe.transformer, str(tmp_path / "schedule.json"))
    planned, total = handle.predicted_block_evals(10)
    calls["blocks"] = 0
    _run(pipe, kwargs, steps=10)
    assert calls["blocks"] == planned < total
    assert abs(total / planned - 1.5) <= 0.05 * 1.5


@pytest.mark.parametrize("family", ["ltx_video", "mochi", "wan_video_to_video", "wan22_ti2v", "skyreels_v2",
                                    "hunyuan_video", "hunyuan_video15"])
def test_profiled_schedules_run_as_planned_on_each_family(family, monkeypatch):
    """Every family from profile to cache: the schedule derived at 1.5x computes exactly the planned block
    evaluations in each branch the pipeline makes (batched, named, or unnamed prompt and negative prompt; a
    timestep per token, as Wan 2.2 TI2V-5B; both of HunyuanVideo's block lists)."""
    import diffusers.models.transformers as transformers

    blocks = {"ltx_video": _block_class("ltx_video"), "mochi": _block_class("mochi"),
              "wan_video_to_video": _block_class("wan"), "wan22_ti2v": _block_class("wan"),
              "skyreels_v2": _block_class("skyreels_v2"), "hunyuan_video15": _block_class("hunyuan_video15"),
              "hunyuan_video": (transformers.transformer_hunyuan_video.HunyuanVideoTransformerBlock,
                                transformers.transformer_hunyuan_video.HunyuanVideoSingleTransformerBlock)}[family]
    calls = count_block_calls(monkeypatch, blocks=blocks)
    pipe, list_name, depth, kwargs = getattr(tvp, family)()
    profile = profile_pipeline(pipe, [tvp.PROMPT, "a blue circle moves up"], num_inference_steps=8, **kwargs)
    schedule = derive_for_target(profile, 1.5)
    handle = delta_cache.apply_delta_cache(pipe.transformer, schedule)
    planned, total = handle.predicted_block_evals(8)
    calls["blocks"] = 0
    _run(pipe, kwargs, steps=8)
    branches = handle.stats()["branches"]
    assert all(b["computed_block_evals"] == planned and b["calls"] == 8 for b in branches.values()), branches
    assert calls["blocks"] == planned * len(branches) and abs(total / planned - 1.5) <= 0.05 * 1.5
    assert len(branches) == (2 if family.startswith(("wan", "skyreels", "hunyuan_video15")) else 1)


def _expert_steps(pipe, steps: int) -> tuple[range, range]:
    """The steps WanPipeline gives each of Wan 2.2's experts: the high-noise one while the timestep is at or above
    boundary_ratio x the scheduler's training timesteps, the low-noise one after (read off the scheduler here)."""
    pipe.scheduler.set_timesteps(steps)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    high = int((pipe.scheduler.timesteps >= boundary).sum())
    return range(0, high), range(high, steps)


def test_profile_experts_profiles_each_of_wan22s_experts_on_its_own_steps(tmp_path, monkeypatch):
    """Wan 2.2: both experts profiled in the same generations, each on the steps it runs; the schedule derived from
    each, placed into the run's steps, computes in every branch of its expert exactly the block evaluations it
    predicted for that expert's steps (a schedule counted over all steps, or on the wrong expert's steps, does not);
    the saved profiles (one folder per expert) are reused on resume."""
    calls = count_block_calls(monkeypatch, blocks=_block_class("wan22"))
    pipe, list_name, depth, kwargs = tvp.wan22()
    steps = 12
    high, low = _expert_steps(pipe, steps)
    assert len(high) >= 3 and len(low) >= 3  # (the tiny pipeline's boundary splits the run)
    profiles = delta_cache.profile_experts(pipe, [tvp.PROMPT, "a blue circle moves up"], out_dir=tmp_path,
                                           num_inference_steps=steps, **kwargs)
    assert list(profiles) == ["transformer", "transformer_2"]
    for name, own in (("transformer", high), ("transformer_2", low)):
        profile = profiles[name]
        assert profile.num_steps == len(own) and profile.step_window == (own.start, steps)
        assert profile.foreground_ratio(list_name).shape == (len(own), depth)
        assert profile.provenance["transformer"] == name
        assert sorted(p.name for p in (tmp_path / "profiles" / name).glob("*.npz")) == ["000.npz", "001.npz"]
    assert not np.allclose(profiles["transformer"].prompts[0].sketches[list_name][0],
                           profiles["transformer_2"].prompts[0].sketches[list_name][0])

    calls["blocks"] = 0
    again = delta_cache.profile_experts(pipe, [tvp.PROMPT, "a blue circle moves up"], out_dir=tmp_path, resume=True,
                                        num_inference_steps=steps, **kwargs)
    assert calls["blocks"] == 0
    assert again["transformer_2"].step_window == (low.start, steps)

    schedules = {name: derive_for_target(profile, 1.5) for name, profile in profiles.items()}
    for name, profile in profiles.items():  # the error the search saw is the placed schedule's on the run's steps
        for schedule in (schedules[name], derive_for_target(profile, 1.5, forecasts=("linear",))):
            assert schedule.provenance["predicted_error"] == pytest.approx(profile.predicted_error(schedule), abs=1e-6)
    # the linear forecast's warm-up is the run's: a schedule whose warm-up ends before the expert's steps draws a
    # line from the expert's second refresh on (the hooks' rule), so it predicts otherwise than holding
    lines = {forecast: profiles["transformer_2"].predicted_error(Schedule(
        name="run-grid", num_steps=steps, forecast=forecast, block_lists={list_name: BlockListSchedule(
            tuple(range(depth)), (0, 1, low.start + 1, low.start + 2, low.start + 4), depth)}))
        for forecast in ("hold", "linear")}
    assert lines["linear"] != pytest.approx(lines["hold"])
    handles = {}
    for name, schedule in schedules.items():
        own = high if name == "transformer" else low
        assert schedule.num_steps == steps and schedule.provenance["profiled_steps"] == [own.start, own.stop - 1]
        refresh = schedule.block_lists[list_name].refresh_steps
        assert set(range(steps)) - set(own) <= set(refresh) and own.start in refresh  # (the others: computed)
        schedule.save(tmp_path / f"{name}.json")
        handles[name] = delta_cache.apply_delta_cache(getattr(pipe, name), str(tmp_path / f"{name}.json"))
    calls["blocks"] = 0
    _run(pipe, kwargs, steps=steps)
    for name, handle in handles.items():
        planned, total = schedules[name].provenance["predicted_block_evals"]
        branches = handle.stats()["branches"]
        assert set(branches) == {"cond", "uncond"}
        assert all(b["computed_block_evals"] == planned and b["total_block_evals"] == total
                   for b in branches.values()), (name, planned, total, branches)
        assert abs(total / planned - 1.5) <= 0.05 * 1.5
    assert calls["blocks"] == 2 * sum(s.provenance["predicted_block_evals"][0] for s in schedules.values())
    written = write_report(profiles["transformer_2"], schedules["transformer_2"], tmp_path / "report")
    assert f"steps {low.start}-{steps - 1} of the run's {steps}" in written[-1].read_text()

    # A longer run: each expert's plan on the steps the scheduler gives it (the high-noise expert computes every
    # step after its own share, the low-noise one every step before) is what the cache does.
    from delta_cache.models.experts import expert_steps

    # (and a schedule on the run's grid not made for the low-noise expert, which may reuse at its first step)
    plain = Schedule(name="plain", num_steps=steps, block_lists={
        list_name: BlockListSchedule(tuple(range(depth)), (0, 1, 4, 8), depth)})
    first_step_forced = False
    for run_steps, low_noise_schedule in itertools.product((7, 13, 20), (schedules["transformer_2"], plain)):
        own_steps = expert_steps(pipe, run_steps)
        for name, schedule in (("transformer", schedules["transformer"]), ("transformer_2", low_noise_schedule)):
            delta_cache.remove_delta_cache(getattr(pipe, name))
            handles[name] = delta_cache.apply_delta_cache(getattr(pipe, name), schedule)
            mapped = schedule.block_lists[list_name].refresh_steps_for(run_steps, steps)
            first_step_forced |= own_steps[name].start not in mapped
        _run(pipe, kwargs, steps=run_steps)
        for name, handle in handles.items():
            planned = handle.predicted_block_evals(run_steps, steps=own_steps[name])
            assert all((b["computed_block_evals"], b["total_block_evals"]) == planned
                       for b in handle.stats()["branches"].values()), (name, planned, handle.stats()["branches"])
    assert first_step_forced  # (a run in which an expert computes its first step though the schedule reuses there)
    high_refresh = schedules["transformer"].block_lists[list_name].refresh_steps_for(20, steps)
    assert set(range(-(-high.stop * 20 // steps), 20)) <= high_refresh

    # A schedule on the run's grid not made for the expert: judged on the expert's steps as the cache runs it
    # (its first step computed, whatever the schedule says)
    for handle_name in handles:
        delta_cache.remove_delta_cache(getattr(pipe, handle_name))
    for refresh in (plain.block_lists[list_name].refresh_steps, (0, 1, 2, 3)):
        plain = Schedule(name="plain", num_steps=steps, block_lists={
            list_name: BlockListSchedule(tuple(range(depth)), refresh, depth)})
        predicted = profiles["transformer_2"].predicted_block_evals(plain)
        assert np.isfinite(profiles["transformer_2"].predicted_error(plain))  # (no step before the expert's first)
        handle = delta_cache.apply_delta_cache(pipe.transformer_2, plain)
        _run(pipe, kwargs, steps=steps)
        assert all((b["computed_block_evals"], b["total_block_evals"]) == predicted
                   for b in handle.stats()["branches"].values()), (refresh, predicted, handle.stats())
        handle.remove()


def test_delta_cache_and_profiler_refuse_diffusion_forcing():
    """SkyReels-V2's diffusion-forcing pipelines call the transformer with frames at different noise levels: one
    line at the first call, from the cache and from the profiler."""
    pipe, list_name, depth, _ = tvp.skyreels_v2()
    handle = delta_cache.apply_delta_cache(pipe.transformer, _schedule(list_name, depth, (0, 2)))
    latents, text = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 8, 32)
    with torch.no_grad(), pytest.raises(UserInputError, match="does not run diffusion forcing"):
        with pipe.transformer.cache_context("cond"):
            pipe.transformer(hidden_states=latents, timestep=torch.tensor([[999, 999, 500]]),
                             encoder_hidden_states=text, enable_diffusion_forcing=True, return_dict=False)
    handle.remove()
    from delta_cache.profiling.probe import ProbeSettings, ProfileProbe

    probe = ProfileProbe(pipe.transformer, [list_name], ProbeSettings(token_grid=(3, 2, 2)))
    with torch.no_grad(), pytest.raises(UserInputError, match="does not profile diffusion forcing"):
        with pipe.transformer.cache_context("cond"):
            pipe.transformer(hidden_states=latents, timestep=torch.tensor([[999, 999, 500]]),
                             encoder_hidden_states=text, enable_diffusion_forcing=True, return_dict=False)
    probe.detach()


def test_profile_pipeline_refuses_what_it_cannot_profile():
    pipe, _, _, kwargs = tvp.wan22()
    with pytest.raises(UserInputError, match="two transformers .* delta_cache.profile_experts"):
        profile_pipeline(pipe, [tvp.PROMPT], **kwargs)
    # before any generation: an expert the run gives no step, one module as both experts
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(UserInputError, match="num_inference_steps=1 and boundary_ratio 0.875, transformer_2 runs no"):
        delta_cache.profile_experts(pipe, [tvp.PROMPT], num_inference_steps=1, **kwargs)
    pipe.register_to_config(boundary_ratio=None)
    with pytest.raises(UserInputError, match="has a transformer_2 but no boundary_ratio"):
        delta_cache.profile_experts(pipe, [tvp.PROMPT], num_inference_steps=4, **kwargs)
    pipe.transformer_2 = pipe.transformer
    with pytest.raises(UserInputError, match="transformer and transformer_2 are the same module"):
        delta_cache.profile_experts(pipe, [tvp.PROMPT], num_inference_steps=4, **kwargs)
    assert not calls
    pipe, _, _, kwargs = tvp.cogvideox()
    with pytest.raises(UserInputError, match="sets output_type itself"):
        profile_pipeline(pipe, [tvp.PROMPT], output_type="np", **kwargs)
    with pytest.raises(UserInputError, match="sets return_dict itself"):
        profile_pipeline(pipe, [tvp.PROMPT], return_dict=False, **kwargs)
    with pytest.raises(UserInputError, match="non-empty list"):
        profile_pipeline(pipe, tvp.PROMPT, **kwargs)
    with pytest.raises(UserInputError, match="mask_source"):
        profile_pipeline(pipe, [tvp.PROMPT], mask_source="sam", **kwargs)

    class Flux:  # a transformer class it has no layout for
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(UserInputError, match="does not know where Linear's video tokens are"):
        profile_pipeline(Flux(), [tvp.PROMPT])


# ---- scripts/profile_model.py --family diffusers ------------------------------------------------------
def test_profile_model_on_a_diffusers_folder(tmp_path, monkeypatch, capsys):
    """One command from a saved pipeline folder to a schedule, its figures and summary; the schedule runs on the
    pipeline loaded again, computing what it planned."""
    from diffusers import DiffusionPipeline
    from script_loader import load_script

    pipe, list_name, depth, kwargs = tvp.cogvideox()
    pipe.save_pretrained(tmp_path / "cogvideox")
    out = tmp_path / "profile"
    base = Schedule(name="base-model", num_steps=8, block_lists={  # (say, the schedule of the model before tuning)
        list_name: BlockListSchedule(tuple(range(1, depth - 1)), (0, 1, 4), depth)})
    base.save(tmp_path / "base.json")
    argv = ["--family", "diffusers", "--ckpt_dir", str(tmp_path / "cogvideox"), "--size", "64*64", "--frame_num", "9",
            "--sample_steps", "8", "--sample_guide_scale", "6", "--negative_prompt", "blurry", "--prompt", tvp.PROMPT,
            "--prompt", "a blue circle moves up", "--target_speedup", "1.5", "--threads", "1"]
    profile_model = load_script(REPO / "scripts" / "profile_model.py")
    profile_model.main([*argv, "--out", str(out), "--compare_with", str(tmp_path / "base.json")])
    printed = capsys.readouterr().out
    assert "delta_cache.apply_delta_cache(pipe.transformer" in printed
    computed = 8 * depth - 5 * (depth - 2)  # five reuse steps of the four middle blocks
    compared = f"compared with base-model: {computed}/{8 * depth} block evaluations per branch"
    assert compared in printed and "profiled at no more compute" in printed
    assert compared.removeprefix("compared with ") in (out / "summary.md").read_text()
    # a schedule that does not fit the folder's transformer: one line before anything loads
    with pytest.raises(UserInputError, match="names block list 'blocks', which this model does not have"):
        profile_model.main([*argv, "--out", str(tmp_path / "bad"), "--compare_with", "wan2.1-t2v-14b"])
    assert not (tmp_path / "bad").exists()
    schedule = delta_cache.load_schedule(out / "schedule.json")
    assert schedule.name == "profiled-cogvideox" and schedule.num_steps == 8
    provenance = schedule.provenance
    assert provenance["pipeline"] == "CogVideoXPipeline" and provenance["ckpt_dir"] == str(tmp_path / "cogvideox")
    assert (provenance["height"], provenance["width"], provenance["num_frames"]) == (64, 64, 9)
    assert provenance["negative_prompt"] == "blurry" and provenance["dtype"] == "float32"
    assert all((out / name).is_file() for name in ("foreground_ratio.png", "step_change.png", "schedule.png",
                                                  "summary.md", "profiles/000.npz", "profiles/001.npz"))

    calls = count_block_calls(monkeypatch, blocks=_block_class("cogvideox"))
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "cogvideox")
    handle = delta_cache.apply_delta_cache(loaded.transformer, schedule)
    _run(loaded, kwargs, steps=8)
    assert calls["blocks"] == handle.predicted_block_evals(8)[0] < depth * 8


@pytest.mark.parametrize("flags, message", [
    (["--sample_shift", "3"], "--sample_shift is for --family wan or hunyuan_video"),
    (["--task", "i2v-14B"], "--task is for --family wan or hunyuan_video"),
    (["--size", "64x64"], "--size must be WIDTH*HEIGHT"),
    (["--size", "64*64*2"], "--size must be WIDTH*HEIGHT"),
    (["--ckpt_dir", "{tmp}/missing"], "no such folder"),
    (["--ckpt_dir", "{tmp}"], "not a diffusers pipeline folder (no model_index.json)"),
    (["--ckpt_dir", "{tmp}/flux"], "does not know where FluxTransformer2DModel's video tokens are"),
    (["--ckpt_dir", "{tmp}/mixed"], "second transformer is a CogVideoXTransformer3DModel, its first a "
                                     "WanTransformer3DModel"),
    (["--ckpt_dir", "{tmp}/no_boundary"], "has a transformer_2 but no boundary_ratio in model_index.json"),
    (["--target_speedup_2", "1.5"], "--target_speedup_2 is for a pipeline with two transformers (Wan 2.2)"),
    (["--tau", "0.3", "--target_speedup_2", "1.5"], "--target_speedup_2 is for --target_speedup (with --tau"),
    (["--ckpt_dir", "{tmp}/forcing"], "SkyReelsV2DiffusionForcingPipeline runs frames at different noise levels"),
    (["--ckpt_dir", "{tmp}/i2v"], "CogVideoXImageToVideoPipeline takes an image as input"),
])
def test_profile_model_diffusers_refuses_before_loading(tmp_path, flags, message):
    from script_loader import load_script

    for name, transformer, transformer_2, pipeline in (
            ("flux", "FluxTransformer2DModel", [None, None], "FluxPipeline"),
            ("wan22", "WanTransformer3DModel", [None, None], "WanPipeline"),
            ("mixed", "WanTransformer3DModel", ["diffusers", "CogVideoXTransformer3DModel"], "WanPipeline"),
            ("no_boundary", "WanTransformer3DModel", ["diffusers", "WanTransformer3DModel"], "WanPipeline"),
            ("forcing", "SkyReelsV2Transformer3DModel", [None, None], "SkyReelsV2DiffusionForcingPipeline"),
            ("i2v", "CogVideoXTransformer3DModel", [None, None], "CogVideoXImageToVideoPipeline")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps(
            {"_class_name": pipeline, "transformer": ["diffusers", transformer], "transformer_2": transformer_2,
             "extra": ["this", "Zen"]}))  # (a library the loader must not import)
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = ["--family", "diffusers", "--ckpt_dir", str(tmp_path / "wan22"), "--prompt", "x",
            "--out", str(tmp_path / "out"), *flags]
    if "--ckpt_dir" in flags:  # (the last --ckpt_dir wins)
        argv = argv[:2] + argv[4:]
    elif "--size" in flags or "--sample_shift" in flags or "--task" in flags:
        argv[3] = str(tmp_path / "flux")
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        load_script(REPO / "scripts" / "profile_model.py").main(argv)
    assert not (tmp_path / "out").exists()


def test_profile_pipeline_refuses_runs_it_would_get_wrong(tmp_path):
    """Each of these profiled something else than the prompt's uncached run, or failed late; now one line before
    the first generation, or at its first step."""
    pipe, list_name, depth, kwargs = tvp.wan()
    handle = delta_cache.apply_delta_cache(pipe.transformer, _schedule(list_name, depth, (0, 1, 3, 5)))
    with pytest.raises(UserInputError, match="the transformer has the delta cache on"):
        profile_pipeline(pipe, [tvp.PROMPT], num_inference_steps=2, **kwargs)
    handle.remove()
    with pytest.raises(UserInputError, match="leave num_videos_per_prompt at 1"):
        profile_pipeline(pipe, [tvp.PROMPT], num_videos_per_prompt=2, **kwargs)
    with pytest.raises(UserInputError, match="max_queries must be a positive integer"):
        profile_pipeline(pipe, [tvp.PROMPT], max_queries=0, **kwargs)
    with pytest.raises(UserInputError, match="seeds must be a non-empty list of integers"):
        profile_pipeline(pipe, [tvp.PROMPT], seeds=[], **kwargs)
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(UserInputError, match="2 files for 1 runs"):
        profile_pipeline(pipe, [tvp.PROMPT], mask_source="files", mask_files=[tmp_path / "flat.npy"] * 2, **kwargs)
    with pytest.raises(UserInputError, match=r"flat.npy: expected a 3-D array"):
        profile_pipeline(pipe, [tvp.PROMPT], mask_source="files", mask_files=[tmp_path / "flat.npy"], **kwargs)
    with pytest.raises(UserInputError, match="mask_files go with mask_source='files'"):
        profile_pipeline(pipe, [tvp.PROMPT], mask_files=[tmp_path / "flat.npy"], **kwargs)
    with pytest.raises(UserInputError, match="compiled"):
        profile_pipeline(type("Compiled", (), {"transformer": torch.compile(pipe.transformer)})(), [tvp.PROMPT])

    # an attention backend other than torch's SDPA: the probe sees no attention (the profile was all zeros)
    pipe.transformer.set_attention_backend("flex")
    with pytest.raises(UserInputError, match="saw no torch scaled_dot_product_attention call"):
        profile_pipeline(pipe, [tvp.PROMPT], num_inference_steps=2, **kwargs)
    pipe.transformer.set_attention_backend("native")

    # after all of it the pipeline is plain again
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in pipe.transformer.modules())


def test_profile_pipeline_without_step_callbacks():
    """A pipeline that takes no callback_on_step_end (HunyuanVideo 1.5's) is profiled from its latent output and its
    scheduler's steps: the same profile as with the callback."""
    from diffusers import WanPipeline

    class NoCallbacks(WanPipeline):
        def __call__(self, prompt, generator=None, output_type="np", return_dict=True, negative_prompt=None,
                     height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0,
                     max_sequence_length=512):
            return super().__call__(prompt=prompt, generator=generator, output_type=output_type,
                                    return_dict=return_dict, negative_prompt=negative_prompt, height=height,
                                    width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, max_sequence_length=max_sequence_length)

    pipe, list_name, depth, kwargs = tvp.wan()
    with_callbacks = profile_pipeline(pipe, [tvp.PROMPT], num_inference_steps=4, **kwargs).prompts[0]
    bare = NoCallbacks(**pipe.components)
    without = profile_pipeline(bare, [tvp.PROMPT], num_inference_steps=4, **kwargs).prompts[0]
    assert with_callbacks.mask.any() and np.array_equal(without.mask, with_callbacks.mask)
    np.testing.assert_array_equal(without.sketches[list_name], with_callbacks.sketches[list_name])
    with pytest.raises(UserInputError, match="NoCallbacks takes no callback_on_step_end"):
        profile_pipeline(bare, [tvp.PROMPT], num_inference_steps=4, callback_on_step_end=lambda *a: {}, **kwargs)


def test_profile_pipeline_keeps_the_users_callback():
    """A callback passed to profile_pipeline runs at every step with the tensors it asks for, and latents it
    returns are the ones the (latent motion) mask is made from (here zeros: latents without change have no
    foreground)."""
    pipe, list_name, depth, kwargs = tvp.wan()
    steps = []

    def zero_at_the_end(pipeline, step, timestep, tensors):
        steps.append((step, tuple(tensors)))
        return {"latents": tensors["latents"] * 0} if step == 2 else {}

    with pytest.raises(UserInputError, match="the foreground mask for prompt .* is empty"):
        profile_pipeline(pipe, [tvp.PROMPT], num_inference_steps=3, callback_on_step_end=zero_at_the_end,
                         callback_on_step_end_tensor_inputs=["prompt_embeds"], mask_source="motion", **kwargs)
    assert steps == [(step, ("latents", "prompt_embeds")) for step in range(3)]


def test_provenance_tells_inputs_apart():
    """What resume compares: images and arrays by a digest of their data, numbers as numbers."""
    from PIL import Image

    from delta_cache.profiling.pipelines import _plain

    black, white = (Image.new("RGB", (8, 8), value) for value in ((0, 0, 0), (255, 255, 255)))
    assert _plain(black) != _plain(white) and _plain(black) == _plain(Image.new("RGB", (8, 8)))
    assert _plain(np.zeros(3)) != _plain(np.ones(3)) and _plain(torch.zeros(3)) == _plain(np.zeros(3, np.float32))
    assert _plain({"scale": np.float32(0.5), "layers": (1, 2)}) == {"scale": 0.5, "layers": [1, 2]}
    json.dumps(_plain({"image": black, "seeds": np.arange(2)}))


def test_profile_pipeline_stops_early_on_inputs_that_do_not_fit(tmp_path):
    """Found at the transformer's first call, not after a whole generation: a size whose latent the patch does not
    divide (CogVideoX checks only multiples of 8), a mask file with too few frames for the token grid."""
    pipe, list_name, depth, kwargs = tvp.cogvideox()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(UserInputError, match=r"latent's height \(9\) is not a multiple of the transformer's patch"):
        profile_pipeline(pipe, [tvp.PROMPT], num_inference_steps=4, **{**kwargs, "height": 72})
    np.save(tmp_path / "short.npy", np.ones((3, 64, 64), dtype=bool))  # 9 video frames need 1 + 4 + 4
    with pytest.raises(UserInputError, match=r"mask has 3 frames; 3 token frames need at least 6 video frames"):
        profile_pipeline(pipe, [tvp.PROMPT], mask_source="files", mask_files=[tmp_path / "short.npy"],
                         num_inference_steps=4, **kwargs)
    assert len(calls) == 2  # one transformer call each


def test_profile_model_diffusers_refuses_missing_weights_and_resumes_a_moved_folder(tmp_path):
    """Weights a component lacks are one line (not random values); a folder moved elsewhere still resumes."""
    import shutil

    from safetensors.torch import load_file, save_file
    from script_loader import load_script

    pipe, *_ = tvp.cogvideox()
    pipe.save_pretrained(tmp_path / "cogvideox")
    argv = ["--family", "diffusers", "--size", "64*64", "--frame_num", "9", "--sample_steps", "3", "--prompt",
            tvp.PROMPT, "--tau", "0.5", "--threads", "1", "--out", str(tmp_path / "out")]
    profile_model = load_script(REPO / "scripts" / "profile_model.py")
    profile_model.main([*argv, "--ckpt_dir", str(tmp_path / "cogvideox")])
    shutil.move(tmp_path / "cogvideox", tmp_path / "moved")
    profile_model.main([*argv, "--ckpt_dir", str(tmp_path / "moved"), "--resume"])

    vocabulary = tmp_path / "moved" / "tokenizer" / "tokenizer.json"
    vocabulary.rename(vocabulary.with_suffix(".json.away"))  # (the tokenizer still loads, knowing no word)
    with pytest.raises(UserInputError, match="the tokenizer knows none of the words of a plain prompt"):
        profile_model.main([*argv, "--ckpt_dir", str(tmp_path / "moved"), "--resume"])
    vocabulary.with_suffix(".json.away").rename(vocabulary)

    weights = tmp_path / "moved" / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if "block.1." not in k}, weights, metadata={"format": "pt"})
    with pytest.raises(UserInputError, match=r"text_encoder \(the text_encoder\): the weights lack"):
        profile_model.main([*argv, "--ckpt_dir", str(tmp_path / "moved"), "--resume"])


def test_compare_cached_on_a_diffusers_folder(tmp_path, capsys):
    """One prompt without and with a schedule on a saved pipeline: the speedup line with the counted block
    evaluations, PSNR/SSIM against the uncached video, both mp4s; a schedule for another model is one line
    before any weights load."""
    from script_loader import load_script

    from delta_cache.video import read_video

    pipe, *_ = tvp.cogvideox()
    pipe.save_pretrained(tmp_path / "cogvideox")
    schedule = tmp_path / "schedule.json"
    _schedule("transformer_blocks", tvp.DEPTH, (0, 1, 2, 4)).save(schedule)
    compare = load_script(REPO / "scripts" / "compare_cached.py")
    argv = ["--ckpt_dir", str(tmp_path / "cogvideox"), "--prompt", tvp.PROMPT, "--size", "64*64", "--frame_num", "9",
            "--sample_steps", str(STEPS), "--threads", "1", "--out", str(tmp_path / "out")]
    compare.main([*argv, "--cache_schedule", str(schedule)])
    out = capsys.readouterr().out
    computed = STEPS * tvp.DEPTH - 2 * (tvp.DEPTH - 2)  # steps 3 and 5 reuse blocks 1-4
    assert f"ideal {STEPS * tvp.DEPTH / computed:.2f}x ({computed}/{STEPS * tvp.DEPTH} block evaluations)" in out
    assert "measured speedup" in out and "cached vs uncached: PSNR" in out
    assert read_video(tmp_path / "out" / "cached.mp4").shape == read_video(tmp_path / "out" / "uncached.mp4").shape

    with pytest.raises(UserInputError, match="names block list 'blocks', which CogVideoXTransformer3DModel does not"):
        compare.main([*argv[:-1], str(tmp_path / "bad"), "--cache_schedule", "wan2.1-t2v-14b"])
    with pytest.raises(UserInputError, match="--size must be WIDTH"):
        compare.main([*argv[:-1], str(tmp_path / "bad"), "--cache_schedule", str(schedule), "--size", "64"])
    shallow = tmp_path / "shallow.json"  # made for another depth: refused from the folder's config, before loading
    dc_schedule = _schedule("transformer_blocks", 3, (0, 1, 2, 4))
    dc_schedule.save(shallow)
    with pytest.raises(UserInputError, match="made for 3 blocks in 'transformer_blocks', but this model has 6"):
        compare.main([*argv[:-1], str(tmp_path / "bad"), "--cache_schedule", str(shallow)])
    assert not (tmp_path / "bad").exists()
    # a size whose latent the patch does not divide: one line at the transformer's first call
    with pytest.raises(UserInputError, match=r"latent's height \(9\) is not a multiple of the transformer's patch"):
        compare.main([*argv[:-1], str(tmp_path / "bad"), "--cache_schedule", str(schedule), "--size", "72*72"])


def test_profile_model_and_compare_cached_on_a_wan22_folder(tmp_path, capsys):
    """A saved Wan 2.2 pipeline (two experts): profile_model.py writes one schedule per expert, each for the steps
    its expert runs; compare_cached.py runs both and counts the block evaluations the experts really made; a
    missing or superfluous second schedule is one line before loading."""
    from script_loader import load_script

    pipe, list_name, depth, kwargs = tvp.wan22()
    pipe.save_pretrained(tmp_path / "wan22")
    steps = 10
    high, low = _expert_steps(pipe, steps)
    out = tmp_path / "profile"
    load_script(REPO / "scripts" / "profile_model.py").main([
        "--family", "diffusers", "--ckpt_dir", str(tmp_path / "wan22"), "--size", "32*32", "--frame_num", "5",
        "--sample_steps", str(steps), "--negative_prompt", "blurry", "--prompt", tvp.PROMPT, "--target_speedup", "1.5",
        "--target_speedup_2", "1.2", "--threads", "1", "--out", str(out),
        "--mask_source", "motion"])  # (random weights: their decoded video shows no subject)
    printed = capsys.readouterr().out
    assert "delta_cache.apply_delta_cache(pipe.transformer_2" in printed and "--cache_schedule_2" in printed
    planned = 0
    for name, own in (("transformer", high), ("transformer_2", low)):
        schedule = delta_cache.load_schedule(out / name / "schedule.json")
        assert schedule.name == f"profiled-wan-{name}" and schedule.num_steps == steps
        assert schedule.provenance["profiled_steps"] == [own.start, own.stop - 1]
        assert (out / name / "summary.md").is_file() and (out / "profiles" / name / "000.npz").is_file()
        planned += schedule.provenance["predicted_block_evals"][0]
        assert schedule.provenance["target_speedup"] == (1.5 if name == "transformer" else 1.2)
        shown = load_script(REPO / "scripts" / "show_schedule.py").main([str(out / name / "schedule.json")])
        own_computed, own_total = schedule.provenance["predicted_block_evals"]
        assert (f"runs steps {own.start}-{own.stop - 1} (Wan 2.2's experts): on those, {own_computed}/{own_total} "
                "block evaluations") in shown

    compare = load_script(REPO / "scripts" / "compare_cached.py")
    argv = ["--ckpt_dir", str(tmp_path / "wan22"), "--prompt", tvp.PROMPT, "--size", "32*32", "--frame_num", "5",
            "--threads", "1", "--cache_schedule", str(out / "transformer" / "schedule.json")]
    compare.main([*argv, "--cache_schedule_2", str(out / "transformer_2" / "schedule.json"),
                  "--out", str(tmp_path / "compare")])
    printed = capsys.readouterr().out
    # both branches of both experts, as the schedules planned them on their own steps
    assert f"({2 * planned}/{2 * steps * depth} block evaluations)" in printed, printed
    assert (tmp_path / "compare" / "cached.mp4").is_file()

    plan = next(line for line in printed.splitlines() if line.startswith("cache plan"))
    assert plan.startswith(f"cache plan for {steps} steps: {planned}/{steps * depth} block evaluations per branch")

    with pytest.raises(UserInputError, match="give --cache_schedule_2 for transformer_2 too"):
        compare.main([*argv, "--out", str(tmp_path / "bad")])
    swapped = [*argv[:-1], str(out / "transformer_2" / "schedule.json"),
               "--cache_schedule_2", str(out / "transformer" / "schedule.json"), "--out", str(tmp_path / "bad")]
    with pytest.raises(UserInputError, match="was profiled for transformer_2 .* swap --cache_schedule and"):
        compare.main(swapped)
    Schedule(name="fifty", num_steps=50, block_lists={  # (a schedule for another step count)
        list_name: BlockListSchedule((1, 2), tuple(range(0, 50, 2)), depth)}).save(tmp_path / "fifty.json")
    with pytest.raises(UserInputError, match=r"different step counts \(10 and 50\): give --sample_steps"):
        compare.main([*argv, "--cache_schedule_2", str(tmp_path / "fifty.json"), "--out", str(tmp_path / "bad")])
    pipe, *_ = tvp.wan()
    pipe.save_pretrained(tmp_path / "wan")
    with pytest.raises(UserInputError, match="--cache_schedule_2 is for a pipeline with two transformers"):
        compare.main(["--ckpt_dir", str(tmp_path / "wan"), *argv[2:], "--cache_schedule_2", "wan2.1-t2v-14b",
                      "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def _tiny_hunyuan_video15():
    """A tiny HunyuanVideo 1.5 transformer (text-to-video) and the arguments of one call, as HunyuanVideo15Pipeline
    makes them (its text encoders, Qwen2.5-VL and ByT5, are not built here: the transformer is called directly)."""
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4, num_refiner_layers=1,
        text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=24, rope_axes_dim=(4, 6, 6), target_size=64,
        task_type="t2v").eval()
    generator = torch.Generator().manual_seed(0)
    texts = {name: dict(encoder_hidden_states=torch.randn(1, 8, 32, generator=generator),
                        encoder_attention_mask=torch.tensor([[True] * 6 + [False] * 2]),
                        encoder_hidden_states_2=torch.randn(1, 5, 16, generator=generator),
                        encoder_attention_mask_2=torch.ones(1, 5, dtype=torch.bool), image_embeds=torch.zeros(1, 4, 24))
             for name in ("pred_cond", "pred_uncond")}
    return transformer, torch.randn(1, 9, 3, 4, 4, generator=generator), texts


def _hunyuan_video15_loop(transformer, latents, texts, steps=(999.0, 700.0, 400.0, 100.0)):
    """HunyuanVideo15Pipeline's loop, reduced: per timestep, the guider's two calls in their cache contexts."""
    outputs = []
    with torch.no_grad():
        for t in steps:
            for name, text in texts.items():
                with transformer.cache_context(name):
                    outputs.append(transformer(hidden_states=latents, timestep=torch.tensor([t]), return_dict=False,
                                               **text)[0])
    transformer._reset_stateful_cache()
    return torch.stack(outputs)


def test_hunyuan_video15_blocks_cached_and_profiled(monkeypatch):
    """HunyuanVideo 1.5, whose blocks diffusers' registry does not describe: the cache finds them (both streams),
    changes nothing when every step refreshes, skips what it counts; the probe finds the video tokens in front of
    the text in its attention (the prompt's high-attention tokens of the last block at the first step)."""
    from delta_cache.models.video_families import FAMILIES
    from delta_cache.profiling.probe import ProbeSettings, ProfileProbe

    calls = count_block_calls(monkeypatch, blocks=_block_class("hunyuan_video15"))
    transformer, latents, texts = _tiny_hunyuan_video15()
    assert delta_cache.model_block_lists(transformer) == {"transformer_blocks": 4}
    plain = _hunyuan_video15_loop(transformer, latents, texts)
    schedule = lambda refresh: Schedule(name="t", num_steps=4, block_lists={  # noqa: E731
        "transformer_blocks": BlockListSchedule((1, 2), refresh, 4)})
    handle = delta_cache.apply_delta_cache(transformer, schedule((0, 1, 2, 3)))
    assert torch.equal(_hunyuan_video15_loop(transformer, latents, texts), plain)
    handle.remove()
    handle = delta_cache.apply_delta_cache(transformer, schedule((0, 2)))
    calls["blocks"] = 0
    cached = _hunyuan_video15_loop(transformer, latents, texts)
    assert calls["blocks"] == handle.stats()["computed_block_evals"] == 2 * (16 - 2 * 2)
    assert set(handle.stats()["branches"]) == {"pred_cond", "pred_uncond"} and not torch.equal(cached, plain)
    handle.remove()
    assert torch.equal(_hunyuan_video15_loop(transformer, latents, texts), plain)

    last_block = transformer.transformer_blocks[-1]
    with _FirstAttention(last_block) as capture:
        _hunyuan_video15_loop(transformer, latents, {"pred_cond": texts["pred_cond"]}, steps=(999.0,))
    expected = _high_attention_tokens(*capture.captured, (3, 4, 4), text_first=False)
    family = FAMILIES["HunyuanVideo15Transformer3DModel"]

    def probed(calls):
        probe = ProfileProbe(transformer, list(family.block_lists),
                             ProbeSettings(token_grid=None, branch=family.branch, max_queries=10_000),
                             layout=family.layout)
        try:
            _hunyuan_video15_loop(transformer, latents, calls, steps=(999.0,))
        finally:
            probe.detach()
        return probe

    probe = probed(texts)
    assert probe.token_grid == (3, 4, 4)
    recorded = np.unpackbits(probe.record.high_attention["transformer_blocks"][0][-1])[:48].astype(bool)
    assert np.array_equal(recorded.reshape(3, 4, 4), expected)
    # and the residuals it records are the prompt's call's (the guider's "pred_cond"), not the negative prompt's
    sketch = probe.record.sketches["transformer_blocks"][0][-1]
    np.testing.assert_allclose(sketch, probed({"pred_cond": texts["pred_cond"]}).record.sketches[
        "transformer_blocks"][0][-1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(sketch, probed({"pred_cond": texts["pred_uncond"]}).record.sketches[
        "transformer_blocks"][0][-1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("family, pipeline, extra", [
    # no step callbacks; the guider's branches; --sample_guide_scale sets the guider (the pipeline takes no scale)
    ("hunyuan_video15", "HunyuanVideo15Pipeline", ["--sample_guide_scale", "3"]),
    # blocks registered by delta_cache; named branches without a step index
    ("skyreels_v2", "SkyReelsV2Pipeline", []),
])
def test_profile_model_and_compare_cached_on_saved_folders(family, pipeline, extra, tmp_path, capsys):
    """A saved HunyuanVideo 1.5 or SkyReels-V2 pipeline: profile_model.py writes its schedule, compare_cached.py
    times its denoising loop from the transformer's calls and counts, in both branches, what it planned."""
    from script_loader import load_script

    pipe, list_name, depth, kwargs = getattr(tvp, family)()
    pipe.save_pretrained(tmp_path / family)
    size = ["--size", "64*64", "--frame_num", "9", "--prompt", tvp.PROMPT, "--threads", "1"]
    load_script(REPO / "scripts" / "profile_model.py").main([
        "--family", "diffusers", "--ckpt_dir", str(tmp_path / family), "--sample_steps", "8", *size,
        "--target_speedup", "1.5", "--out", str(tmp_path / "profile")])
    schedule = delta_cache.load_schedule(tmp_path / "profile" / "schedule.json")
    planned, total = schedule.provenance["predicted_block_evals"]
    assert schedule.provenance["pipeline"] == pipeline and total == 8 * depth
    capsys.readouterr()
    load_script(REPO / "scripts" / "compare_cached.py").main([
        "--ckpt_dir", str(tmp_path / family), "--cache_schedule", str(tmp_path / "profile" / "schedule.json"), *size,
        *extra, "--out", str(tmp_path / "compare")])
    printed = capsys.readouterr().out
    assert f"({2 * planned}/{2 * total} block evaluations)" in printed and "measured speedup" in printed, printed


def test_profile_pipeline_without_step_callbacks_counts_the_steps_it_ran():
    """An input video's strength trims the run's steps below the scheduler's: a pipeline without step callbacks is
    profiled on the steps it ran (its _num_timesteps), as with callbacks."""
    from diffusers import WanVideoToVideoPipeline

    class NoCallbacks(WanVideoToVideoPipeline):
        def __call__(self, prompt, video, generator=None, output_type="np", return_dict=True, strength=0.8,
                     negative_prompt=None, height=480, width=832, num_inference_steps=50, guidance_scale=5.0,
                     max_sequence_length=512):
            return super().__call__(prompt=prompt, video=video, generator=generator, output_type=output_type,
                                    return_dict=return_dict, strength=strength, negative_prompt=negative_prompt,
                                    height=height, width=width, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, max_sequence_length=max_sequence_length)

    pipe, list_name, depth, kwargs = tvp.wan_video_to_video()
    kwargs = {**kwargs, "strength": 0.5}
    with_callbacks = profile_pipeline(pipe, [tvp.PROMPT], num_inference_steps=6, **kwargs)
    without = profile_pipeline(NoCallbacks(**pipe.components), [tvp.PROMPT], num_inference_steps=6, **kwargs)
    assert without.num_steps == with_callbacks.num_steps == 3
    np.testing.assert_array_equal(without.prompts[0].sketches[list_name], with_callbacks.prompts[0].sketches[list_name])


@pytest.mark.parametrize("family", ["skyreels_v2", "hunyuan_video15"])
def test_diffusers_caches_in_our_harness_find_blocks_diffusers_does_not_register(family):
    """diffusers' FirstBlockCache and MagCache, as the comparison harness attaches them, on the families whose
    blocks diffusers' registry lacks, in a fresh process (nothing of delta_cache has registered them yet)."""
    import subprocess
    import sys

    code = f"""
import sys, torch
sys.path.insert(0, {str(REPO / 'tests')!r})
torch.set_num_threads(1)
import tiny_video_pipelines as tvp
from delta_cache import baselines
pipe, _, _, kwargs = getattr(tvp, {family!r})()
pipe.set_progress_bar_config(disable=True)
def run():
    pipe(prompt=tvp.PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np",
         **kwargs)
ratios = baselines.calibrate_mag_ratios(pipe.transformer, 4, run)
for cache in (baselines.FirstBlockCache(0.5), baselines.MagCache(0.5, ratios, 4)):
    cache.attach(pipe.transformer)
    run()
    cache.detach(pipe.transformer)
print("ran", len(ratios))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ran 4" in result.stdout
