"""scripts/bench_cache.py's hook-cost measurement: its pass-through blocks and all-reuse schedule."""

from pathlib import Path
from types import SimpleNamespace

import torch

import delta_cache as dc
from script_loader import load_script

bench_cache = load_script(Path(__file__).resolve().parent.parent / "scripts" / "bench_cache.py")


def _tiny_hunyuan_bench():
    torch.manual_seed(0)
    args = SimpleNamespace(layers=2, single_layers=3, dim=16, heads=2, ffn=32, device="cpu", steps=4)
    return bench_cache.hunyuan_video_bench(args, torch.float32)


def test_blocks_pass_through_returns_inputs_and_restores_the_blocks():
    bench = _tiny_hunyuan_bench()
    block = bench.transformer.transformer_blocks[0]
    hidden, text = torch.randn(1, 8, 16), torch.randn(1, 4, 16)
    temb = torch.randn(1, 16)
    with torch.no_grad():
        computed = block(hidden, text, temb)
        with bench_cache.blocks_pass_through(bench.transformer):
            passed = block(hidden, text, temb)
        again = block(hidden, text, temb)
    assert passed[0] is hidden and passed[1] is text
    assert not torch.equal(computed[0], hidden)  # the block really computes outside the context
    assert torch.equal(again[0], computed[0]) and torch.equal(again[1], computed[1])
    assert "forward" not in vars(block)


def test_all_reuse_schedule_skips_every_block_after_the_first_step(monkeypatch):
    """Every block reused but on step 0 (hold) or steps 0 and 2 (linear: the timed steps after them extrapolate,
    on a line through two refreshes, rather than hold)."""
    import delta_cache.hooks as hooks

    bench = _tiny_hunyuan_bench()
    steps = 5
    computed = []  # a block's attention runs only when the block itself computes
    blocks = [*bench.transformer.transformer_blocks, *bench.transformer.single_transformer_blocks]
    for block in blocks:
        block.attn.register_forward_hook(lambda *_: computed.append(1))
    latents = torch.randn(1, 16, 1, 8, 8)
    for forecast, refreshes in (("hold", 1), ("linear", 2)):
        schedule = bench_cache.all_reuse_schedule(bench.transformer, steps, forecast)
        assert schedule.forecast == forecast
        handle = dc.apply_delta_cache(bench.transformer, schedule, num_inference_steps=steps)
        computed.clear()
        bench_cache.denoise_loop(bench, latents, steps)
        assert len(computed) == len(blocks) * refreshes and len(blocks) == 5
        stats = handle.stats()
        assert stats["total_block_evals"] == steps * 5 and stats["computed_block_evals"] == 5 * refreshes
        dc.remove_delta_cache(bench.transformer)
    lines = []
    monkeypatch.setattr(hooks, "_line", lambda *a: lines.append(1) or a[0])
    assert bench_cache.hook_cost(bench, latents, steps, forecast="hold") >= 0.0 and not lines
    assert bench_cache.hook_cost(bench, latents, steps, forecast="linear") >= 0.0
    assert len(lines) >= 2  # (the reuse steps 3 and 4 of each list's run extrapolated)
    assert not hasattr(bench.transformer, "_delta_cache_handle")  # the measurement leaves the model bare


def test_wan_image_task_benches_feed_the_image_transformer_its_clip_tokens():
    for task, image_tokens in (("i2v", 257), ("flf2v", 514)):
        torch.manual_seed(0)
        args = SimpleNamespace(layers=2, dim=16, heads=2, ffn=32, device="cpu", steps=3, no_cfg=False,
                               image_task=task, image_dim=32, vace=False)
        bench = bench_cache.wan_bench(args, torch.float32)
        assert bench.in_channels == 36 and task in bench.description
        shapes = []
        bench.transformer.condition_embedder.image_embedder.register_forward_hook(
            lambda module, inputs, output: shapes.append(tuple(output.shape)))
        latents = torch.randn(1, bench.in_channels, 1, 8, 8)
        bench_cache.denoise_loop(bench, latents, args.steps)
        # one projection of the image tokens per call: 3 steps x 2 CFG branches
        assert shapes == [(1, image_tokens, 16)] * 6, (task, shapes[:2])


def test_wan_vace_bench_runs_the_control_blocks_on_every_step():
    # As WanVACEPipeline calls it: no step index in the cache contexts, control latents on every call.
    args = SimpleNamespace(layers=10, dim=16, heads=2, ffn=32, device="cpu", steps=3, no_cfg=False,
                           image_task="none", image_dim=32, vace=True)
    bench = bench_cache.wan_bench(args, torch.float32)
    assert not bench.passes_step_index and bench.transformer.config.vace_layers == [0, 2, 4, 6, 8]
    control_calls = []
    for block in bench.transformer.vace_blocks:
        block.register_forward_hook(lambda module, inputs, output: control_calls.append(output[0].shape))
    handle = dc.apply_delta_cache(bench.transformer, bench_cache.all_reuse_schedule(bench.transformer, 3, "hold"),
                                  num_inference_steps=3)
    bench_cache.denoise_loop(bench, torch.randn(1, 16, 1, 8, 8), args.steps)
    # 3 steps x 2 branches x 5 control blocks; the main blocks computed on step 0 only (the cache was told 3 steps)
    assert len(control_calls) == 3 * 2 * 5 and control_calls[0] == (1, 16, 16)
    assert handle.stats()["computed_block_evals"] == 2 * 10 and handle.stats()["total_block_evals"] == 3 * 2 * 10


def test_bad_flags_are_one_line_before_anything_runs():
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_cache.py"
    cases = [(["--steps", "1"], "--steps must be at least 2"),
             (["--heads", "3"], "--dim 64 must split into --heads 3 heads of an even width"),
             (["--layers", "0"], "--layers: must be >= 1"),
             (["--tokens", "16", "--layers", "2"], "made for 40 blocks in 'blocks', but this model has 2")]
    for flags, message in cases:
        proc = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300,
                              env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "| tokens |" not in proc.stdout  # no half-written table
