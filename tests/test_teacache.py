"""TeaCache baseline (delta_cache/teacache.py) on a tiny in-memory Wan2.1 pipeline (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import delta_cache as dc
from delta_cache import teacache as tc
from delta_cache.baselines import BlockCounter

from tiny_wan import run, tiny_wan_pipeline

STEPS = 6
LAYERS = 4


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tiny_wan_pipeline(num_layers=LAYERS)


def _config(threshold, **kwargs):
    return tc.TeaCacheConfig(threshold=threshold, coefficients=(1.0, 0.0), indicator="timestep_embedding",
                             num_inference_steps=STEPS, **kwargs)


def test_calibration_computes_everything_and_removal_restores_the_model(pipe):
    reference = run(pipe, STEPS)
    counter = BlockCounter(pipe.transformer)
    try:
        handle = tc.apply_teacache(pipe.transformer, _config(0.0, calibrate=True))
        calibrated = run(pipe, STEPS)
        tc.remove_teacache(pipe.transformer)
        assert counter.count == LAYERS * STEPS * 2  # every block of every call, both CFG branches
    finally:
        counter.remove()
    assert np.array_equal(calibrated, reference)
    pairs = handle.stats.calibration_pairs
    assert len(pairs) == (STEPS - 1) * 2  # one per call after each branch's first
    assert all(change > 0 and output_change > 0 for change, output_change in pairs)
    left = [name for module in pipe.transformer.modules()
            for name in getattr(getattr(module, "_diffusers_hook", None), "hooks", {}) if name.startswith("teacache")]
    assert left == [] and not hasattr(pipe.transformer, "_teacache_handle")
    assert np.array_equal(run(pipe, STEPS), reference)


def test_threshold_bounds_count_real_block_calls(pipe):
    counter = BlockCounter(pipe.transformer)
    try:
        for threshold, computed_steps in ((0.0, STEPS), (1e9, 2)):  # (1, 0) rescaling: the sum is >= 0
            before = counter.count
            handle = tc.apply_teacache(pipe.transformer, _config(threshold))
            run(pipe, STEPS)
            tc.remove_teacache(pipe.transformer)
            # A huge threshold still computes the first and the last step of each branch.
            assert counter.count - before == LAYERS * computed_steps * 2
            assert handle.stats.computed_calls == computed_steps * 2
            assert handle.stats.skipped_calls == (STEPS - computed_steps) * 2
    finally:
        counter.remove()


def test_skipped_calls_add_the_branchs_last_stack_residual(pipe):
    """Observed from outside the cache: the stack's input (a torch pre-hook on the first block fires even
    when the cache skips it) and output (the input of norm_out), call by call; CFG runs cond, then uncond."""
    transformer = pipe.transformer
    stack_inputs, stack_outputs = [], []
    handles = [transformer.blocks[0].register_forward_pre_hook(lambda m, args: stack_inputs.append(args[0].clone())),
               transformer.norm_out.register_forward_pre_hook(lambda m, args: stack_outputs.append(args[0].clone()))]
    try:
        tc.apply_teacache(transformer, _config(1e9))
        run(pipe, STEPS)
        tc.remove_teacache(transformer)
    finally:
        for handle in handles:
            handle.remove()
    assert len(stack_inputs) == len(stack_outputs) == STEPS * 2
    for branch in (0, 1):
        calls = list(range(branch, STEPS * 2, 2))
        first, last = calls[0], calls[-1]
        residual = stack_outputs[first] - stack_inputs[first]
        assert residual.abs().max() > 0
        for call in calls[1:-1]:  # skipped: this branch's residual from step 0, not the other branch's
            torch.testing.assert_close(stack_outputs[call], stack_inputs[call] + residual, rtol=0, atol=1e-6)
        assert not torch.allclose(stack_outputs[last], stack_inputs[last] + residual)  # the last step computes
    other = stack_outputs[1] - stack_inputs[1]
    assert not torch.allclose(other, stack_outputs[0] - stack_inputs[0])  # the branches' residuals differ


def test_accumulated_change_decides_like_the_description(pipe):
    """Rescaled changes accumulate until they reach the threshold; the decisions follow from the calibration
    run's own indicator changes (the indicator is the timestep embedding, the same with or without skipping)."""
    handle = tc.apply_teacache(pipe.transformer, _config(0.0, calibrate=True))
    run(pipe, STEPS)
    tc.remove_teacache(pipe.transformer)
    changes = [change for change, _ in handle.stats.calibration_pairs[::2]]  # cond branch, steps 1..5
    threshold = float(np.median(changes[:-1])) * 1.5
    expected, total = [True], 0.0
    for step, change in enumerate(changes, start=1):
        total += change
        compute = step == STEPS - 1 or total >= threshold
        expected.append(compute)
        total = 0.0 if compute else total
    assert 2 < sum(expected) < STEPS  # the threshold makes it skip some, not all
    counter = BlockCounter(pipe.transformer)
    per_call = []  # block forwards that really ran, per transformer call (cond, uncond, cond, ...)
    hook = pipe.transformer.register_forward_hook(lambda *_: per_call.append(counter.count - sum(per_call)))
    try:
        handle = tc.apply_teacache(pipe.transformer, _config(threshold))
        first, _ = run(pipe, STEPS), per_call[:]
        second = run(pipe, STEPS)  # the same handle again: the state starts afresh
        tc.remove_teacache(pipe.transformer)
    finally:
        hook.remove()
        counter.remove()
    decisions = [LAYERS if compute else 0 for compute in expected for _branch in (0, 1)]
    assert per_call == decisions * 2
    assert np.array_equal(first, second) and handle.stats.computed_calls == 2 * 2 * sum(expected)


def test_fit_coefficients_recovers_a_polynomial_highest_power_first():
    truth = [3.0, -2.0, 0.5, 0.1, 0.01]
    x = np.linspace(0.01, 0.3, 20)
    coefficients = tc.fit_coefficients(list(zip(x, np.polyval(truth, x))))
    assert np.allclose(coefficients, truth, atol=1e-6)
    with pytest.raises(ValueError, match="more than 4 calibration pairs"):
        tc.fit_coefficients([(0.1, 0.2)] * 4)


def test_published_settings_and_clear_errors(pipe):
    from delta_cache.models.hunyuan_video.teacache import teacache_settings as hunyuan_settings
    from delta_cache.models.wan.teacache import teacache_settings as wan_settings

    assert wan_settings("t2v-14B", 1280, 720).thresholds == (0.14, 0.20)
    assert wan_settings("t2v-1.3B", 832, 480, "timestep_projection").first_computed_steps == 5
    assert wan_settings("i2v-14B", 1280, 720).coefficients != wan_settings("i2v-14B", 832, 480).coefficients
    assert hunyuan_settings().indicator == "modulated_input"
    with pytest.raises(dc.UserInputError, match="no Wan2.1 coefficients for t2i-14B"):
        wan_settings("t2i-14B", 1280, 720)
    with pytest.raises(dc.UserInputError, match="indicator 'temb'"):
        tc.TeaCacheConfig(0.1, (1.0,), "temb")
    with pytest.raises(dc.UserInputError, match=r"has no norm1\(hidden_states, emb=temb\)"):
        tc.apply_teacache(pipe.transformer, tc.TeaCacheConfig(0.1, (1.0,), "modulated_input"))
    handle = tc.apply_teacache(pipe.transformer, _config(0.1))
    try:
        with pytest.raises(dc.UserInputError, match="already applied"):
            tc.apply_teacache(pipe.transformer, _config(0.1))
        with pytest.raises(dc.UserInputError, match="TeaCache is applied"):
            dc.apply_delta_cache(pipe.transformer, "wan2.1-t2v-14b")
    finally:
        handle.remove()
    delta = dc.apply_delta_cache(pipe.transformer, _four_block_schedule())
    try:
        with pytest.raises(dc.UserInputError, match="the delta cache is applied"):
            tc.apply_teacache(pipe.transformer, _config(0.1))
    finally:
        delta.remove()


def _four_block_schedule():
    from delta_cache.schedule import Schedule

    return Schedule.from_dict({"format_version": 1, "num_steps": STEPS, "block_lists": {
        "blocks": {"background_blocks": [1, 2], "refresh_steps": [0, 1, 5]}}})


def test_timestep_projection_mode_computes_its_first_steps(pipe):
    counter = BlockCounter(pipe.transformer)
    try:
        handle = tc.apply_teacache(pipe.transformer, tc.TeaCacheConfig(
            threshold=1e9, coefficients=(1.0, 0.0), indicator="timestep_projection", num_inference_steps=8,
            first_computed_steps=5))
        run(pipe, 8)
        tc.remove_teacache(pipe.transformer)
    finally:
        counter.remove()
    assert counter.count == LAYERS * (5 + 1) * 2 and handle.stats.skipped_calls == 2 * 2  # steps 5 and 6 skip


def test_hunyuan_video_indicator_is_the_modulated_image_input_and_text_passes_through():
    """Direct transformer calls (no cache_context, no step index: the hook counts calls), tiny random model."""
    from delta_cache.models.hunyuan_video.tiny import build_tiny_components

    torch.set_num_threads(1)
    transformer = build_tiny_components(num_layers=2, num_single_layers=2)["transformer"].float()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 4, 4, generator=generator)
    inputs = dict(encoder_hidden_states=torch.randn(1, 6, 48, generator=generator),
                  encoder_attention_mask=torch.ones(1, 6, dtype=torch.bool),
                  pooled_projections=torch.randn(1, 24, generator=generator), guidance=torch.tensor([6000.0]))
    timesteps = [1000.0, 900.0, 700.0]

    def generate(config):
        seen = {"norm1": [], "stack_in": [], "stack_out": [], "text_out": []}
        first, last = transformer.transformer_blocks[0], transformer.single_transformer_blocks[-1]
        hooks = [first.norm1.register_forward_hook(lambda m, a, out: seen["norm1"].append(out[0].clone())),
                 first.register_forward_pre_hook(lambda m, a: seen["stack_in"].append((a[0].clone(), a[1].clone()))),
                 transformer.norm_out.register_forward_pre_hook(lambda m, a: seen["stack_out"].append(a[0].clone())),
                 last.register_forward_hook(lambda m, a, out: seen["text_out"].append(out[1].clone()))]
        handle = tc.apply_teacache(transformer, config)
        try:
            with torch.no_grad():
                outputs = [transformer(latents, timestep=torch.tensor([t]), **inputs).sample for t in timesteps]
        finally:
            tc.remove_teacache(transformer)
            for hook in hooks:
                hook.remove()
        return handle, outputs, seen

    settings = dict(coefficients=(1.0, 0.0), indicator="modulated_input", num_inference_steps=3)
    handle, plain, seen = generate(tc.TeaCacheConfig(threshold=0.0, calibrate=True, **settings))
    modulated = seen["norm1"][::2]  # block 0's forward and the hook's own indicator call both run norm1
    for (change, _), now, before in zip(handle.stats.calibration_pairs, modulated[1:], modulated[:-1]):
        assert change == pytest.approx(float((now - before).abs().mean() / before.abs().mean()), rel=1e-5)

    handle, cached, seen = generate(tc.TeaCacheConfig(threshold=1e9, **settings))
    assert (handle.stats.computed_calls, handle.stats.skipped_calls) == (2, 1)
    residual = seen["stack_out"][0] - seen["stack_in"][0][0]
    torch.testing.assert_close(seen["stack_out"][1], seen["stack_in"][1][0] + residual, rtol=0, atol=1e-6)
    text_in, text_out = seen["stack_in"][1][1], seen["text_out"][1]
    assert torch.equal(text_out, text_in)  # skipped: the text stream passes through unchanged
    assert torch.equal(cached[0], plain[0]) and torch.equal(cached[2], plain[2])  # computed calls: exact
    assert not torch.allclose(cached[1], plain[1])  # the skipped call's output is an approximation


@pytest.mark.parametrize("cache", ["teacache", "delta_cache"])
def test_an_interrupted_generation_does_not_leak_into_the_next(cache):
    # HunyuanVideoPipeline passes no step index, so both caches count their calls; a run interrupted at its
    # second step skips the pipeline's end-of-call reset. The next generation must run as a fresh one: the same
    # blocks computed on every step (TeaCache: its first and last steps), the same latents.
    from delta_cache.models.hunyuan_video.teacache import teacache_settings
    from delta_cache.models.runner import load_runner
    from delta_cache.models.tiny_info import committed_checkpoint

    model = load_runner("hunyuan_video", committed_checkpoint("hunyuan_video"), width=32, height=32, num_frames=5,
                        num_steps=STEPS, device=torch.device("cpu"))
    transformer = model.transformer
    counter = BlockCounter(transformer)
    if cache == "teacache":
        settings = teacache_settings()
        tc.apply_teacache(transformer, tc.TeaCacheConfig(threshold=1e9, coefficients=settings.coefficients,
                                                         indicator=settings.indicator, num_inference_steps=STEPS))
    else:
        depths = {"transformer_blocks": 20, "single_transformer_blocks": 40}
        lists = {name: {"background_blocks": [f"0-{depth - 1}"], "refresh_steps": [0, 3]}
                 for name, depth in depths.items()}
        schedule = dc.Schedule.from_dict({"format_version": 1, "num_steps": STEPS, "block_lists": lists})
        dc.apply_delta_cache(transformer, schedule, num_inference_steps=STEPS)
    per_call, seen = [], [0]

    def record_call(*_):  # block evaluations of each transformer call
        per_call.append(counter.count - seen[0])
        seen[0] = counter.count

    transformer.register_forward_hook(record_call)

    def generation():
        per_call.clear()
        return model.generate("a red square moves left", 1)[0]

    fresh = generation()
    fresh_counts = list(per_call)

    class Interrupted(Exception):
        pass

    def interrupt_the_second_step(*_):
        if len(per_call) == 1:
            raise Interrupted

    hook = transformer.proj_out.register_forward_hook(interrupt_the_second_step)
    with pytest.raises(Interrupted):
        generation()
    hook.remove()
    seen[0] = counter.count
    again = generation()
    assert per_call == fresh_counts and torch.equal(again, fresh)
