"""The cache semantics (method.md section 2) on hand-checkable dummy models and on a tiny WanPipeline."""

import warnings

import numpy as np
import pytest
import torch
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.cache_utils import CacheMixin

import delta_cache as dc
import tiny_wan


class AffineBlock(torch.nn.Module):
    """hidden -> scale * hidden + weight * temb; optional text stream: text -> text + text_weight * temb."""

    calls = 0  # real computations, counted inside forward

    def __init__(self, scale, weight, text_weight=None):
        super().__init__()
        self.scale, self.weight, self.text_weight = scale, weight, text_weight

    def forward(self, hidden_states, encoder_hidden_states=None, temb=None):
        AffineBlock.calls += 1
        hidden = self.scale * hidden_states + self.weight * temb
        if self.text_weight is None:
            return hidden
        return hidden, encoder_hidden_states + self.text_weight * temb


class TwoStreamBlock(AffineBlock):
    pass


TransformerBlockRegistry.register(AffineBlock, TransformerBlockMetadata(0, None))
TransformerBlockRegistry.register(TwoStreamBlock, TransformerBlockMetadata(0, 1))


class DummyTransformer(torch.nn.Module, CacheMixin):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)

    def forward(self, hidden, text, temb):
        for block in self.blocks:
            out = block(hidden, text, temb)
            hidden, text = out if isinstance(out, tuple) else (out, text)
        return hidden, text


def _schedule(background, refresh, num_steps, forecast="hold"):
    return dc.Schedule.from_dict({"format_version": 1, "name": "test", "num_steps": num_steps, "forecast": forecast,
                                  "block_lists": {"blocks": {"background_blocks": background,
                                                             "refresh_steps": refresh}}})


def _denoise(model, temb_by_step, branch="cond", hidden=1.0, text=0.0):
    outputs = []
    for step, temb in enumerate(temb_by_step):
        with model.cache_context(branch, step_index=step, num_inference_steps=len(temb_by_step)):
            h, t = model(torch.tensor([hidden]), torch.tensor([text]), torch.tensor([temb]))
        outputs.append((h.item(), t.item()))
    return outputs


def test_hand_computed_runs_at_first_and_last_block():
    # block 0: h -> 2h + t (cached, run starts at 0); block 1: h + 10t (computed); block 2: h + 100t (cached, last)
    model = DummyTransformer([AffineBlock(2.0, 1.0), AffineBlock(1.0, 10.0), AffineBlock(1.0, 100.0)])
    dc.apply_delta_cache(model, _schedule([0, 2], [0], num_steps=2))
    (step0, _), (step1, _) = _denoise(model, [1.0, 2.0])
    assert step0 == 113.0  # refresh: 2*1+1 = 3 (delta 2), 3+10 = 13, 13+100 = 113 (delta 100)
    assert step1 == 123.0  # reuse: 1+2 = 3, 3+20 = 23, 23+100 = 123 (uncached would be 224)


def _reference(blocks, background, refresh, temb_by_step, hidden=1.0, text=0.0, forecast="hold"):
    """Plain-Python statement of the semantics: runs, delta = out(last) - in(first), overwrite. With the
    linear forecast a reuse step adds the delta on the line through the last two refreshes (not through two
    warm-up steps), while that line's forecast of the last refresh was closer than holding."""
    runs = dc.BlockListSchedule(tuple(background), ()).runs()
    run_of = {i: run for run in runs for i in range(run[0], run[1] + 1)}
    warmup = next(k for k in range(len(temb_by_step) + 1) if k not in refresh)
    history, trusted, outputs = {}, {}, []  # run -> [(step, (hidden delta, text delta)), ...]; run -> bool

    def line(run, step):
        if len(history[run]) < 2 or history[run][-2][0] < warmup - 1:
            return None
        (s0, d0), (s1, d1) = history[run][-2:]
        return tuple(a + (a - b) * (step - s1) / (s1 - s0) for a, b in zip(d1, d0))

    for step, temb in enumerate(temb_by_step):
        h, t = hidden, text
        run_inputs = {}
        for i, b in enumerate(blocks):
            run = run_of.get(i)
            if run is not None and step not in refresh:
                if i == run[0]:
                    delta = history[run][-1][1]
                    if forecast == "linear" and trusted.get(run, True) and line(run, step) is not None:
                        delta = line(run, step)
                    h, t = h + delta[0], t + delta[1]
                continue
            if run is not None and i == run[0]:
                run_inputs[run] = (h, t)
            h = b.scale * h + b.weight * temb
            t = t + (b.text_weight or 0.0) * temb
            if run is not None and i == run[1]:
                new = (h - run_inputs[run][0], t - run_inputs[run][1])
                if forecast == "linear" and run in history and line(run, step) is not None:
                    def distance(d):
                        return sum((x - y) ** 2 for x, y in zip(d, new))
                    trusted[run] = distance(line(run, step)) < distance(history[run][-1][1])
                history.setdefault(run, []).append((step, new))
        outputs.append((h, t))
    return outputs


def test_linear_forecast_by_hand():
    # one block, h -> h + temb, cached; refreshes at steps 0 and 2 record deltas 1 and 3
    model = DummyTransformer([AffineBlock(1.0, 1.0)])
    dc.apply_delta_cache(model, _schedule([0], [0, 2], num_steps=4, forecast="linear"))
    outputs = [h for h, _ in _denoise(model, [1.0, 2.0, 3.0, 4.0])]
    # step 1: only one delta so far, so it holds (1 + 1); step 3: 3 + (3 - 1) * (3 - 2) / (2 - 0) = 4 (held: 3)
    assert outputs == [2.0, 2.0, 4.0, 5.0]
    # with a 2-step warm-up (0, 1) no line runs through two warm-up steps: step 2 holds 2 (1 + 2), step 3
    # computes 4 (delta 4), step 4 extrapolates through steps 1 and 3: 4 + (4 - 2) * 1 / 2 = 5
    model = DummyTransformer([AffineBlock(1.0, 1.0)])
    dc.apply_delta_cache(model, _schedule([0], [0, 1, 3], num_steps=5, forecast="linear"))
    outputs = [h for h, _ in _denoise(model, [1.0, 2.0, 3.0, 4.0, 5.0])]
    assert outputs == [2.0, 3.0, 3.0, 5.0, 6.0]
    # a line that missed the refresh is not trusted: refreshes 0, 2, 4 record deltas 1, 3, -5; the line
    # through steps 0 and 2 forecast 5 for step 4, farther from -5 than holding 3, so step 5 holds -5 (1 - 5)
    # instead of extrapolating -9
    model = DummyTransformer([AffineBlock(1.0, 1.0)])
    dc.apply_delta_cache(model, _schedule([0], [0, 2, 4], num_steps=6, forecast="linear"))
    outputs = [h for h, _ in _denoise(model, [1.0, 2.0, 3.0, 4.0, -5.0, 6.0])]
    assert outputs == [2.0, 2.0, 4.0, 5.0, -4.0, -4.0]


@pytest.mark.parametrize("forecast", ["hold", "linear"])
@pytest.mark.parametrize("block_cls", [AffineBlock, TwoStreamBlock])
def test_matches_reference_semantics_and_counts_real_calls(block_cls, forecast):
    rng = np.random.default_rng(0)
    params = [(float(rng.uniform(0.5, 1.5)), float(rng.uniform(-1, 1)),
               float(rng.uniform(-1, 1)) if block_cls is TwoStreamBlock else None) for _ in range(8)]
    background, refresh = [0, 1, 2, 4, 6, 7], [0, 1, 4, 7]
    temb = [float(x) for x in rng.uniform(0, 1, size=10)]
    model = DummyTransformer([block_cls(*p) for p in params])
    handle = dc.apply_delta_cache(model, _schedule(background, refresh, num_steps=10, forecast=forecast))
    AffineBlock.calls = 0
    got = _denoise(model, temb)
    expected = _reference([block_cls(*p) for p in params], background, refresh, temb, forecast=forecast)
    if forecast == "linear":  # the forecast really differs from holding the delta
        assert not np.allclose(got, _reference([block_cls(*p) for p in params], background, refresh, temb))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # 10 steps x 8 blocks, the 6 background blocks skipped on the 6 reuse steps
    assert AffineBlock.calls == 80 - 6 * 6
    assert handle.stats()["computed_block_evals"] == AffineBlock.calls
    if block_cls is TwoStreamBlock:  # the text stream really is restored on skipped blocks
        text_without_restore = _reference([AffineBlock(s, w, None) for s, w, _ in params], background, refresh, temb)
        assert not np.allclose([t for _, t in got], [t for _, t in text_without_restore])


def test_cond_and_uncond_keep_separate_deltas():
    params = [(1.5, 1.0), (1.0, 2.0), (0.5, -1.0), (1.0, 3.0)]
    background, refresh = [0, 1, 3], [0, 3]
    cond_temb, uncond_temb = [1.0, 2.0, 3.0, 4.0, 5.0], [-3.0, 0.5, 7.0, -2.0, 1.0]
    model = DummyTransformer([AffineBlock(*p) for p in params])
    handle = dc.apply_delta_cache(model, _schedule(background, refresh, num_steps=5))
    got_cond, got_uncond = [], []
    for step in range(5):  # interleaved like a CFG pipeline
        for branch, temb, out in (("cond", cond_temb, got_cond), ("uncond", uncond_temb, got_uncond)):
            with model.cache_context(branch, step_index=step, num_inference_steps=5):
                out.append(model(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([temb[step]]))[0].item())
    reference = [AffineBlock(*p) for p in params]
    np.testing.assert_allclose(got_cond, [h for h, _ in _reference(reference, background, refresh, cond_temb)])
    np.testing.assert_allclose(got_uncond, [h for h, _ in _reference(reference, background, refresh, uncond_temb)])
    branches = handle.stats()["branches"]
    assert set(branches) == {"cond", "uncond"} and branches["cond"]["computed_block_evals"] == 20 - 3 * 3


def test_counts_steps_itself_without_step_metadata_and_resets_per_generation():
    # HunyuanVideo's pipeline passes no step_index: the cache counts calls per branch and must restart
    # at 0 after the pipeline's end-of-call reset.
    model = DummyTransformer([AffineBlock(1.5, 1.0), AffineBlock(1.0, 2.0), AffineBlock(0.5, -1.0)])
    dc.apply_delta_cache(model, _schedule([0, 1], [0, 2], num_steps=4))
    temb = [1.0, 2.0, 3.0, 4.0]

    def generation():
        outs = []
        for value in temb:
            with model.cache_context("cond"):
                outs.append(model(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([value]))[0].item())
        model._reset_stateful_cache()
        return outs

    first, second = generation(), generation()
    assert first == second
    expected = [h for h, _ in _reference(list(model.blocks), [0, 1], [0, 2], temb)]
    np.testing.assert_allclose(first, expected)


def test_calls_outside_any_cache_context_work():
    model = DummyTransformer([AffineBlock(2.0, 1.0), AffineBlock(1.0, 10.0)])
    handle = dc.apply_delta_cache(model, _schedule([0], [0], num_steps=2), num_inference_steps=2)
    outs = [model(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([t]))[0].item() for t in (1.0, 2.0)]
    assert outs == [13.0, 1.0 + 2.0 + 20.0]
    assert handle.stats()["branches"]["default"]["computed_block_evals"] == 3


def test_delta_buffer_dtype_and_device_options():
    def model():
        return DummyTransformer([AffineBlock(1.5, 1.0), AffineBlock(1.0, 2.0)]).to(torch.bfloat16)

    temb = torch.linspace(0.1, 1.0, 6)
    results = {}
    for option in ({}, {"delta_dtype": torch.float32}, {"delta_device": "cpu"}):
        m = model()
        handle = dc.apply_delta_cache(m, _schedule([0, 1], [0], num_steps=6), **option)
        hidden = torch.ones(4, 8, dtype=torch.bfloat16)
        outs = []
        for step, t in enumerate(temb):
            with m.cache_context("cond", step_index=step, num_inference_steps=6):
                outs.append(m(hidden, hidden, t.to(torch.bfloat16))[0])
        assert outs[-1].dtype == torch.bfloat16
        results[tuple(option)] = (torch.stack(outs).float(), handle.stats()["delta_memory_bytes"])
    assert results[()][1] == 4 * 8 * 2  # one bf16 activation-sized delta
    assert results[("delta_dtype",)][1] == 4 * 8 * 4  # fp32 doubles it
    torch.testing.assert_close(results[("delta_dtype",)][0], results[()][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results[("delta_device",)][0], results[()][0], rtol=0, atol=0)


def test_a_narrower_delta_dtype_rounds_the_delta_not_the_activations():
    # fp32 activations of 1e5 (beyond fp16's range) and 1000.3 (not a bf16 number): only the deltas (2 and
    # 2t) are stored narrow, so reuse steps give what the uncached model gives.
    for hidden, dtype in ((1e5, torch.float16), (1000.3, torch.bfloat16)):
        model = DummyTransformer([AffineBlock(1.0, 2.0)])
        dc.apply_delta_cache(model, _schedule([0], [0], num_steps=3), delta_dtype=dtype)
        outputs = [h for h, _ in _denoise(model, [1.0, 1.0, 1.0], hidden=hidden)]
        expected = torch.tensor(hidden, dtype=torch.float32).item() + 2.0
        assert outputs == [expected] * 3, (dtype, outputs)


def test_a_new_generation_starts_afresh_without_the_pipelines_reset():
    # The pipelines reset the cache after a complete run; an interrupted run (an exception, Ctrl-C) or a loop
    # of direct calls does not. The next generation must not reuse the previous one's deltas.
    temb = [1.0, 2.0, 3.0, 4.0]
    model = DummyTransformer([AffineBlock(1.0, 1.0)])
    handle = dc.apply_delta_cache(model, _schedule([0], [0, 2], num_steps=4, forecast="linear"))
    first = _denoise(model, temb)
    assert _denoise(model, temb) == first  # step 0 again: a new run (the stale line changed step 1)
    _denoise(model, temb[:3])  # interrupted after 3 of 4 steps
    assert _denoise(model, temb, hidden=1.0) == first
    # another latent size after an interrupted run: a new run, not a shape error
    for step, value in enumerate(temb[:3]):
        with model.cache_context("cond", step_index=step, num_inference_steps=4):
            model(torch.ones(3), torch.zeros(3), torch.tensor([value]))
    with model.cache_context("cond", step_index=0, num_inference_steps=4):
        assert model(torch.ones(5), torch.zeros(5), torch.tensor([1.0]))[0].shape == (5,)

    # Counting its own calls (no step index, e.g. HunyuanVideoPipeline, or direct calls): a branch that has
    # counted a whole run starts the next one; after an interrupted run of the same shape, handle.reset().
    model = DummyTransformer([AffineBlock(1.5, 1.0), AffineBlock(1.0, 2.0)])
    handle = dc.apply_delta_cache(model, _schedule([0], [0, 2], num_steps=4), num_inference_steps=4)

    def counted(values):
        outs = []
        for value in values:
            with model.cache_context("cond"):
                outs.append(model(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([value]))[0].item())
        return outs

    AffineBlock.calls = 0
    fresh = counted(temb)
    assert counted(temb) == fresh and AffineBlock.calls == 2 * (8 - 2)  # both runs reused block 0 twice
    counted(temb[:3])  # interrupted
    handle.reset()
    assert counted(temb) == fresh


def test_the_pipelines_step_count_wins_over_the_configured_one():
    # num_inference_steps= is for pipelines whose cache context has no step count; WanPipeline's has one.
    model = DummyTransformer([AffineBlock(1.0, 1.0), AffineBlock(1.0, 1.0)])
    handle = dc.apply_delta_cache(model, _schedule([0], ["0-3", 10, 20, 30, 40], num_steps=50), num_inference_steps=50)
    AffineBlock.calls = 0
    _denoise(model, [float(t) for t in range(20)])  # a 20-step run whose context says 20
    computed, total = handle.predicted_block_evals(20)
    assert AffineBlock.calls == computed and handle.stats()["computed_block_evals"] == computed < total


def test_calls_past_the_last_step_and_repeated_steps():
    model = DummyTransformer([AffineBlock(1.0, 1.0)])
    handle = dc.apply_delta_cache(model, _schedule([0], [0, 2], num_steps=4, forecast="linear"))
    # the first call of a run is already past its last step: computed (no warm-up bookkeeping missing)
    with model.cache_context("cond", step_index=4, num_inference_steps=4):
        assert model(torch.ones(1), torch.zeros(1), torch.tensor([1.0]))[0].item() == 2.0
    handle.reset()
    # a sampler that calls the model twice on one refresh step: the second call overwrites the delta
    outputs = []
    for step in (0, 1, 2, 2, 3):
        with model.cache_context("cond", step_index=step, num_inference_steps=4):
            outputs.append(model(torch.ones(1), torch.zeros(1), torch.tensor([float(step)]))[0].item())
    # step 3 reuses the line through the refreshes of steps 0 and 2 (deltas 0 and 2): 1 + 3
    assert outputs == [1.0, 1.0, 3.0, 3.0, 4.0]


def test_apply_errors_are_clear():
    model = DummyTransformer([AffineBlock(1.0, 1.0), AffineBlock(1.0, 1.0)])
    with pytest.raises(dc.ScheduleError, match="block 5 .* beyond the model's depth"):
        dc.apply_delta_cache(model, _schedule([5], [0], num_steps=2))
    dc.apply_delta_cache(model, _schedule([0], [0], num_steps=2))
    with pytest.raises(dc.UserInputError, match="already applied"):
        dc.apply_delta_cache(model, _schedule([0], [0], num_steps=2))


# ---- a real diffusers pipeline ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe40():
    pipe = tiny_wan.tiny_wan_pipeline(num_layers=40)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_paper_preset_computes_992_of_2000_block_evaluations_per_branch(pipe40):
    transformer = pipe40.transformer
    calls = {"transformer": 0, "cond": 0, "uncond": 0}

    def on_transformer_call(module, args):
        calls["transformer"] += 1

    def on_ffn_call(module, args):  # ffn runs only when its block really computes
        calls["cond" if calls["transformer"] % 2 == 1 else "uncond"] += 1  # WanPipeline: cond, then uncond

    hooks = [transformer.register_forward_pre_hook(on_transformer_call)]
    hooks += [block.ffn.register_forward_pre_hook(on_ffn_call) for block in transformer.blocks]
    handle = dc.apply_delta_cache(transformer, "wan2.1-t2v-14b")
    try:
        tiny_wan.run(pipe40, steps=50)
    finally:
        dc.remove_delta_cache(transformer)
        for h in hooks:
            h.remove()
    assert calls == {"transformer": 100, "cond": 992, "uncond": 992}
    stats = handle.stats()
    assert (stats["computed_block_evals"], stats["total_block_evals"]) == (1984, 4000)
    assert stats["branches"]["cond"]["computed_block_evals"] == 992
    assert stats["ideal_speedup"] == pytest.approx(2000 / 992)


def test_pipeline_bit_identity_and_repeatability(pipe40):
    plain = tiny_wan.run(pipe40, steps=8)
    everything = _schedule(list(range(40)), list(range(8)), num_steps=8)  # caches all, but refreshes each step
    handle = dc.apply_delta_cache(pipe40.transformer, everything)
    np.testing.assert_array_equal(tiny_wan.run(pipe40, steps=8), plain)
    assert handle.stats()["computed_block_evals"] == handle.stats()["total_block_evals"]
    dc.remove_delta_cache(pipe40.transformer)

    dc.apply_delta_cache(pipe40.transformer, "wan2.1-t2v-14b")
    first, second = tiny_wan.run(pipe40, steps=20), tiny_wan.run(pipe40, steps=20)  # 10 of 20 steps reuse
    dc.remove_delta_cache(pipe40.transformer)
    np.testing.assert_array_equal(first, second)
    plain20 = tiny_wan.run(pipe40, steps=20)
    assert not np.array_equal(first, plain20)  # the cache really changed something
    np.testing.assert_array_equal(tiny_wan.run(pipe40, steps=8), plain)  # and removal restores the model


def test_unregistered_block_class_is_refused_without_touching_the_model():
    class Unregistered(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states=None, temb=None):
            return hidden_states + temb

    model = DummyTransformer([AffineBlock(1.0, 1.0), Unregistered()])
    with pytest.raises(dc.UserInputError, match="Unregistered is not registered"):
        dc.apply_delta_cache(model, _schedule([0, 1], [0], num_steps=2))
    assert not hasattr(model.blocks[0], "_diffusers_hook") or not model.blocks[0]._diffusers_hook.hooks
    dc.apply_delta_cache(model, _schedule([0], [0], num_steps=2))  # and it can still be applied properly


def test_compiled_blocks_cache_like_eager_ones_with_one_graph_per_kind_of_step():
    # diffusers' compile_repeated_blocks on a cached transformer. The cache's per-block Python state (run
    # position, branch, statistics) must stay out of the traced code: otherwise dynamo recompiles the block
    # for each combination and, past its recompile limit, silently runs it eagerly. Allowed: two entries,
    # one for refresh steps and one for reuse steps; a limit hit raises here.
    torch._dynamo.reset()
    pipe = tiny_wan.tiny_wan_pipeline(num_layers=6)
    pipe.set_progress_bar_config(disable=True)
    calls = {"ffn": 0}

    @torch.compiler.disable  # counted eagerly on every real call, compiled or not
    def count_ffn_call(module, args):
        calls["ffn"] += 1

    for block in pipe.transformer.blocks:  # ffn runs only when its block really computes
        block.ffn.register_forward_pre_hook(count_ffn_call)
    # runs [1, 2] and [4]: a run's first, last, and first-and-last block; 0, 3, 5 always compute
    dc.apply_delta_cache(pipe.transformer, _schedule([1, 2, 4], [0, 1, 4, 6], num_steps=8))
    eager = tiny_wan.run(pipe, steps=8)
    assert calls["ffn"] == 2 * (6 * 8 - 3 * 4)  # cond + uncond, 3 blocks skipped on 4 reuse steps
    calls["ffn"] = 0
    pipe.transformer.compile_repeated_blocks(fullgraph=False)
    try:
        with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
            compiled = tiny_wan.run(pipe, steps=8)
    finally:
        torch._dynamo.reset()
    assert calls["ffn"] == 2 * (6 * 8 - 3 * 4)
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


def test_what_a_cache_cannot_be_applied_to_is_one_clear_error():
    """Found by an API walkthrough: the pipeline instead of its transformer (an AttributeError), a diffusers
    cache applied by its function (accepted: both skipped blocks), a schedule built in code with a repeated
    block (diffusers' "hook already exists" after half the hooks were on, leaving the model broken)."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    from delta_cache.schedule import BlockListSchedule
    from delta_cache.teacache import TeaCacheConfig, apply_teacache

    pipe = tiny_wan.tiny_wan_pipeline(num_layers=4)
    with pytest.raises(dc.UserInputError, match="takes the pipeline's transformer .*, not a WanPipeline"):
        dc.apply_delta_cache(pipe, "wan2.1-t2v-14b")
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.1))
    for apply in (lambda: dc.apply_delta_cache(pipe.transformer, _schedule([0, 1], [0], num_steps=2)),
                  lambda: apply_teacache(pipe.transformer, TeaCacheConfig(0.1, (1.0, 0.0), "timestep_embedding"))):
        with pytest.raises(dc.UserInputError, match="already carries a diffusers cache \\(hook 'fbc_"):
            apply()
    with pytest.raises(dc.ScheduleError, match="background_blocks must be distinct integers >= 0"):
        BlockListSchedule((1, 2, 2, 3), (0, 1))
    assert BlockListSchedule((3, 1, 2), (1, 0)).runs() == [(1, 3)]  # (unsorted: two runs of one block list)


def test_a_run_longer_or_shorter_than_configured_without_step_index(monkeypatch):
    """HunyuanVideoPipeline passes no step index, so the cache counts calls against the step count it was given.
    A longer run continues while the timestep falls (its extra calls are computed; it was taken for a second
    run and reused blocks there), and any other length warns at the end of the run."""
    from block_calls import count_block_calls
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from diffusers.models.transformers.transformer_hunyuan_video import (HunyuanVideoSingleTransformerBlock,
                                                                         HunyuanVideoTransformerBlock)

    from delta_cache.models.hunyuan_video.tiny import build_tiny_components
    from delta_cache.schedule import BlockListSchedule, Schedule

    torch.set_num_threads(1)
    calls = count_block_calls(monkeypatch, blocks=(HunyuanVideoTransformerBlock, HunyuanVideoSingleTransformerBlock))
    parts = build_tiny_components(num_layers=2, num_single_layers=2)
    parts["transformer"] = parts["transformer"].float()
    pipe = HunyuanVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **parts)
    pipe.set_progress_bar_config(disable=True)
    every_other = BlockListSchedule((0, 1), (0, 2))  # 4 steps: steps 1 and 3 reuse both blocks of each list
    schedule = Schedule(name="every_other", num_steps=4, block_lists={"transformer_blocks": every_other,
                                                                      "single_transformer_blocks": every_other})
    dc.apply_delta_cache(pipe.transformer, schedule, num_inference_steps=4)

    def run(steps):
        calls["blocks"] = 0
        pipe(prompt="a red square", height=32, width=32, num_frames=5, num_inference_steps=steps,
             generator=torch.Generator().manual_seed(0), output_type="latent")
        return calls["blocks"]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(4) == 4 * 4 - 2 * 4  # as planned, no warning
    with pytest.warns(UserWarning, match=r"made 8 transformer calls \(each a step.*\), but the cache planned 4 steps "
                                         ".* num_inference_steps=8"):
        assert run(8) == 4 * 4 - 2 * 4 + 4 * 4  # steps 4-7 computed (they were a second 4-step run: 8 reused)


def test_block_level_group_offloading_enabled_first_is_refused():
    """A reuse step skips the block that loads its offloading group, and the group's other blocks would run with
    their weights offloaded (a device mismatch on a GPU); applied after the cache, offloading wraps it."""
    from delta_cache.schedule import BlockListSchedule, Schedule

    schedule = Schedule(name="all", num_steps=4, block_lists={"blocks": BlockListSchedule(tuple(range(6)), (0, 2))})
    cpu = torch.device("cpu")
    offload = dict(onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=3)
    pipe = tiny_wan.tiny_wan_pipeline(num_layers=6)
    pipe.transformer.enable_group_offload(**offload)
    with pytest.raises(dc.UserInputError, match=r"group offloading is enabled on this transformer \(blocks.0 loads a "
                                                r"group\): apply the delta cache first"):
        dc.apply_delta_cache(pipe.transformer, schedule)
    pipe = tiny_wan.tiny_wan_pipeline(num_layers=6)
    pipe.set_progress_bar_config(disable=True)
    handle = dc.apply_delta_cache(pipe.transformer, schedule)
    pipe.transformer.enable_group_offload(**offload)  # the other order works
    tiny_wan.run(pipe, steps=4)
    assert handle.stats()["computed_block_evals"] == 2 * 2 * 6  # 2 refresh steps x 2 branches x 6 blocks


@torch.no_grad()
def _guided_loop(transformer, named: bool, second_order: bool = False, same_texts: bool = False, seed: int = 0):
    """A denoising loop calling the transformer for a prompt and a negative prompt at each timestep, inside
    cache contexts (`named`, as WanPipeline) or outside any (as diffusers' Wan video-to-video, HunyuanVideo
    image-to-video pipelines do); with `second_order`, one branch called twice a timestep on other
    latents after the first timestep (as diffusers' Heun samplers: their timesteps are t0, t1, t1, t2, t2, ...)."""
    import contextlib

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 3, 4, 4, generator=generator)
    text, negative = torch.randn(2, 1, 8, 32, generator=generator)
    if same_texts:  # (an empty prompt with the default empty negative prompt)
        negative = text.clone()

    def call(name, latents, embeddings, t):
        with transformer.cache_context(name) if named else contextlib.nullcontext():
            return transformer(hidden_states=latents, timestep=torch.tensor([t]), encoder_hidden_states=embeddings,
                               return_dict=False)[0]

    for t in (999, 800, 600, 400, 200, 100):
        if second_order and t != 999:
            first = call("cond", x, text, t)
            x = x - 0.05 * first - 0.05 * call("cond", x - 0.1 * first, text, t)
        elif second_order:
            x = x - 0.1 * call("cond", x, text, t)
        else:
            cond, uncond = call("cond", x, text, t), call("uncond", x, negative, t)
            x = x - 0.1 * (uncond + 5.0 * (cond - uncond))
    transformer._reset_stateful_cache()  # (the pipelines' end of a run)
    return x


def test_calls_without_a_cache_context_keep_prompt_and_negative_prompt_apart():
    """Pipelines that call the transformer for the prompt and the negative prompt without naming them: the
    second call of a timestep on the same latents is another branch, with its own deltas, so the run is the one
    the named branches give (sharing one branch mixed the prompt's deltas into the negative prompt's calls). A
    second-order sampler's repeated timestep, on other latents, stays one branch."""
    torch.set_num_threads(1)
    transformer = tiny_wan.tiny_wan_pipeline(num_layers=6).transformer
    schedule = dc.Schedule(name="t", num_steps=6, block_lists={"blocks": dc.BlockListSchedule((1, 2, 3, 4), (0, 1, 3))})
    handle = dc.apply_delta_cache(transformer, schedule)
    named = _guided_loop(transformer, named=True)
    unnamed = _guided_loop(transformer, named=False)
    assert torch.equal(named, unnamed)
    branches = handle.stats()["branches"]
    assert {name: b["calls"] for name, b in branches.items()} == {"cond": 6, "uncond": 6, "default": 6, "default_2": 6}
    assert branches["default_2"]["computed_block_evals"] == branches["uncond"]["computed_block_evals"] < 36
    handle.reset()
    with pytest.warns(UserWarning, match="made 11 transformer calls"):  # (two a step: the sampler's, not branches)
        _guided_loop(transformer, named=False, second_order=True)
    assert set(handle.stats()["branches"]) == {"cond", "uncond", "default", "default_2"}  # (no new branch)
    assert handle.stats()["branches"]["default"]["calls"] == 6 + 11
    dc.remove_delta_cache(transformer)


def test_unnamed_calls_repeated_interrupted_or_compiled():
    """Calls outside any cache_context: the same call repeated (timing, warm-up) stays one branch; a run cut short
    in its first call (Ctrl-C, out of memory) leaves nothing that changes the next run; a compiled transformer
    does not recompile per timestep for the branch naming."""
    torch.set_num_threads(1)
    schedule = dc.Schedule(name="t", num_steps=6, block_lists={"blocks": dc.BlockListSchedule((1, 2, 3, 4), (0, 3))})
    transformer = tiny_wan.tiny_wan_pipeline(num_layers=6).transformer
    handle = dc.apply_delta_cache(transformer, schedule)
    clean = _guided_loop(transformer, named=False)

    x, text = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 8, 32)
    handle.reset()
    with torch.no_grad():
        for _ in range(3):
            transformer(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=text, return_dict=False)
    transformer._reset_stateful_cache()
    assert handle.stats()["branches"]["default"]["calls"] == 6 + 3 and "default_3" not in handle.stats()["branches"]

    for interrupted_call in (1, 2):  # the prompt's first call, or the negative prompt's (the other branch then
        block_calls = []  # holds a step-0 state a rerun's equal timestep would continue from)

        def interrupt(*_):
            block_calls.append(1)
            if len(block_calls) == interrupted_call:
                raise KeyboardInterrupt

        hook = transformer.blocks[5].register_forward_pre_hook(interrupt)
        with pytest.raises(KeyboardInterrupt):
            _guided_loop(transformer, named=False)
        hook.remove()
        assert torch.equal(_guided_loop(transformer, named=False), clean)

    # a run cut short between its first two steps (in the sampler or a callback, outside any transformer call):
    # the rerun's first calls repeat the first step's exactly (same timestep and latents) and are step 0 again,
    # where before they were taken for a second-order sampler's second call and counted as step 1
    for named in (False, True):
        _first_step_only(transformer, named)
        assert torch.equal(_guided_loop(transformer, named=named), _guided_loop(transformer, named=named))
    _first_step_only(transformer, named=False)
    assert torch.equal(_guided_loop(transformer, named=False), clean)
    assert set(handle.stats()["branches"]) == {"default", "default_2", "cond", "uncond"}  # (the rerun's calls are
    # the same two branches again, not a third and a fourth)
    # ... followed by a run with another seed: its first calls repeat the first timestep on other latents, which
    # no second-order sampler does (they call their first timestep once), so they start the run afresh
    other_seed = _guided_loop(transformer, named=False, seed=1)
    for named in (False, True):
        _first_step_only(transformer, named)
        assert torch.equal(_guided_loop(transformer, named=named, seed=1), other_seed)

    # prompt and negative prompt alike, without cache contexts: one branch whose second call of each step is the
    # same step again (it took the same deltas), so the run is the named one's, with no step-count warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(_guided_loop(transformer, named=False, same_texts=True),
                           _guided_loop(transformer, named=True, same_texts=True))

    transformer.compile(backend="eager")
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        assert torch.equal(_guided_loop(transformer, named=False), clean)


def _first_step_only(transformer, named: bool) -> None:
    """The first step of `_guided_loop`'s run and no more: a run interrupted after it (no end-of-run reset)."""
    import contextlib

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=generator)
    text, negative = torch.randn(2, 1, 8, 32, generator=generator)
    for name, embeddings in (("cond", text), ("uncond", negative)):
        with transformer.cache_context(name) if named else contextlib.nullcontext():
            transformer(hidden_states=x, timestep=torch.tensor([999]), encoder_hidden_states=embeddings,
                        return_dict=False)


@pytest.mark.parametrize("cache", ["teacache", "step_skipping"])
def test_other_caches_keep_unnamed_prompt_and_negative_prompt_apart(cache):
    """TeaCache and naive step skipping name unnamed calls as the delta cache does: the guided loop without
    cache contexts runs as the one with them (sharing a branch, the negative prompt's calls took the prompt's
    cached output or indicator)."""
    from delta_cache import baselines
    from delta_cache import teacache as tc

    torch.set_num_threads(1)
    transformer = tiny_wan.tiny_wan_pipeline(num_layers=6).transformer
    if cache == "teacache":
        tc.apply_teacache(transformer, tc.TeaCacheConfig(threshold=0.3, coefficients=(1.0, 0.0),
                                                         indicator="timestep_embedding", num_inference_steps=6))
    else:
        baselines.apply_step_skipping(transformer, computed_steps=(0, 2, 4, 5), num_steps=6)
    assert torch.equal(_guided_loop(transformer, named=True), _guided_loop(transformer, named=False))
    clean = _guided_loop(transformer, named=False)
    _first_step_only(transformer, named=False)  # (a run cut short after its first step: the rerun's step 0 again)
    assert torch.equal(_guided_loop(transformer, named=False), clean)
    other_seed = _guided_loop(transformer, named=False, seed=1)
    _first_step_only(transformer, named=False)  # (... followed by another seed's run: its step 0, not step 1)
    assert torch.equal(_guided_loop(transformer, named=False, seed=1), other_seed)
    # (prompt and negative prompt alike: one branch, the second call of a step the same step again)
    assert torch.equal(_guided_loop(transformer, named=True, same_texts=True),
                       _guided_loop(transformer, named=False, same_texts=True))
