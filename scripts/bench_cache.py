"""Measured vs ideal speedup of the delta cache, in one run (prints, never asserts).

For each token count, a random-weight transformer (real diffusers class, at the depth the paper preset
needs) runs a denoising loop without and with the cache, calling the transformer as the diffusers
pipeline does:

- `--family wan` (default): WanTransformer3DModel, 40 blocks; a CFG loop (cond + uncond call per step,
  each in its `cache_context` with the step index, as WanPipeline does); preset wan2.1-t2v-14b.
  `--image_task i2v|flf2v`: the image-to-video transformer instead (36 input channels, cross-attention over
  257 or 2 x 257 CLIP image tokens as well as the text, as WanImageToVideoPipeline calls it). `--vace`: the
  VACE transformer (control blocks after every fifth block at 40 blocks, every second otherwise, as the 14B
  and 1.3B models; they run on every step), called as WanVACEPipeline calls it (no step index).
- `--family hunyuan_video`: HunyuanVideoTransformer3DModel, 20 double + 40 single blocks; one call per step
  in `cache_context("cond")` with no step index (embedded guidance, as HunyuanVideoPipeline does), so the
  cache is told the step count; preset hunyuanvideo-720p.

Latency does not depend on weight values, so random weights measure the real code path. The ratio
measured/ideal shows the hooks' overhead together with the part of a call outside the blocks (embeddings,
output layer), which no block cache skips. The last column isolates the hooks: a call with every block
reused (the schedule's forecast) against a call whose blocks return their input without computing, per
skipped block and, for all blocks at once, as a share of a full call.

    python scripts/bench_cache.py                      # CPU: 256, 1024, 4096 tokens
    python scripts/bench_cache.py --device cuda --dim 1536 --heads 12 --ffn 8960 --tokens 32760
    python scripts/bench_cache.py --family hunyuan_video --device cuda --dtype bfloat16 --dim 3072 --heads 24 \\
        --ffn 12288 --tokens 118800

`--compile` compiles the blocks (diffusers' `compile_repeated_blocks`) for both runs; compilation happens in
untimed warm-ups (for the cached run a whole generation, so that both refresh and reuse steps compile).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import delta_cache  # noqa: E402
from delta_cache.cli import OneLineArgumentParser, positive_int, run_cli  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402


def latent_grid(tokens: int) -> tuple[int, int, int]:
    """(frames, height, width) of a latent whose patchified (1, 2, 2) token count is about `tokens`."""
    frames = 1 if tokens <= 1024 else 4
    side = max(1, round((tokens / frames) ** 0.5))
    return frames, 2 * side, 2 * side


@dataclass
class Bench:
    """A random-weight transformer and how its pipeline calls it."""

    transformer: torch.nn.Module
    forward: Callable[[torch.Tensor, torch.Tensor, str], None]  # (latents, timestep, branch)
    branches: tuple[str, ...]
    passes_step_index: bool  # WanPipeline passes step metadata to cache_context; HunyuanVideoPipeline does not
    description: str
    in_channels: int = 16  # Wan's image models take the noise plus 20 condition channels (mask, image latents)


CLIP_TOKENS = 257  # Wan's image encoder (ViT-H/14 at 224 px): a class token and 16 x 16 patches


def wan_bench(args, dtype) -> Bench:
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    layers = args.layers or 40
    image_frames = {"none": 0, "i2v": 1, "flf2v": 2}[args.image_task]
    image_dim = args.image_dim if image_frames else None
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.dim // args.heads,
        in_channels=36 if image_frames else 16, out_channels=16, text_dim=64, freq_dim=256, ffn_dim=args.ffn,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
        image_dim=image_dim, added_kv_proj_dim=args.dim if image_frames else None,
        pos_embed_seq_len=2 * CLIP_TOKENS if image_frames == 2 else None,
    )
    if args.vace:  # the released models: 14B (40 blocks) every fifth block, 1.3B (30 blocks) every second
        config.update(vace_layers=list(range(0, layers, 5 if layers == 40 else 2)), vace_in_channels=96)
    transformer = (WanVACETransformer3DModel if args.vace else WanTransformer3DModel)(**config).eval()
    torch.nn.Module.to(transformer, args.device, dtype)  # ModelMixin.to warns on every dtype cast
    text = torch.randn(1, 32, 64, device=args.device, dtype=dtype)
    # one image's CLIP tokens per frame; the flf2v transformer views the two frames as one sequence of 514
    image = torch.randn(image_frames, CLIP_TOKENS, image_dim, device=args.device, dtype=dtype) if image_frames else None
    controls = {}  # VACE control latents (96 channels) per latent shape, drawn once

    def forward(latents, timestep, branch):
        extra = {}
        if args.vace:
            shape = (latents.shape[0], 96, *latents.shape[2:])
            if shape not in controls:
                controls[shape] = torch.randn(shape, device=latents.device, dtype=latents.dtype)
            extra["control_hidden_states"] = controls[shape]
        transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                    encoder_hidden_states_image=image, return_dict=False, **extra)

    cfg = not args.no_cfg
    kind = f" ({args.image_task}: {image_frames * CLIP_TOKENS} image tokens)" if image_frames else ""
    if args.vace:
        kind = f" (VACE: {len(config['vace_layers'])} control blocks, run every step)"
    # WanPipeline passes the step index to its cache contexts, WanVACEPipeline does not
    return Bench(transformer, forward, ("cond", "uncond") if cfg else ("cond",), not args.vace,
                 f"Wan transformer{kind}: {layers} blocks, dim {args.dim}, {args.steps} steps, "
                 f"{'CFG' if cfg else 'no CFG'}", in_channels=transformer.config.in_channels)


def hunyuan_video_bench(args, dtype) -> Bench:
    from diffusers import HunyuanVideoTransformer3DModel

    from delta_cache.models.hunyuan_video.keys import rope_axes_dim

    layers = args.layers or 20
    head_dim = args.dim // args.heads
    text_dim, pooled_dim, text_tokens = 64, 32, 32
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=args.heads, attention_head_dim=head_dim,
        num_layers=layers, num_single_layers=args.single_layers, num_refiner_layers=2, mlp_ratio=args.ffn / args.dim,
        patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim, rope_axes_dim=rope_axes_dim(head_dim),
    ).eval()
    torch.nn.Module.to(transformer, args.device, dtype)  # ModelMixin.to warns on every dtype cast
    text = torch.randn(1, text_tokens, text_dim, device=args.device, dtype=dtype)
    mask = torch.ones(1, text_tokens, device=args.device, dtype=dtype)
    pooled = torch.randn(1, pooled_dim, device=args.device, dtype=dtype)
    guidance = torch.tensor([6000.0], device=args.device, dtype=dtype)

    def forward(latents, timestep, branch):
        transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                    encoder_attention_mask=mask, pooled_projections=pooled, guidance=guidance, return_dict=False)

    return Bench(transformer, forward, ("cond",), False,
                 f"HunyuanVideo transformer: {layers} double + {args.single_layers} single blocks, dim {args.dim}, "
                 f"{args.steps} steps, embedded guidance (one call per step)")


FAMILIES = {"wan": (wan_bench, "wan2.1-t2v-14b"), "hunyuan_video": (hunyuan_video_bench, "hunyuanvideo-720p")}


def denoise_loop(bench: Bench, latents, steps: int, untimed_steps: int = 0) -> float:
    """Seconds for `steps` steps of transformer calls (one per branch), each in its cache_context; the first
    `untimed_steps` steps run before the clock starts."""
    transformer = bench.transformer
    sync = torch.cuda.synchronize if latents.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for step in range(steps):
            if step == untimed_steps and step:
                sync()
                start = time.perf_counter()
            timestep = torch.full((latents.shape[0],), 1000.0 * (1 - step / steps), device=latents.device)
            step_info = dict(step_index=step, num_inference_steps=steps) if bench.passes_step_index else {}
            for branch in bench.branches:
                with transformer.cache_context(branch, **step_info):
                    bench.forward(latents, timestep, branch)
    sync()
    transformer._reset_stateful_cache()  # what a pipeline does at the end of a generation
    return time.perf_counter() - start


def refreshes(forecast: str) -> list[int]:
    """The all-reuse schedule's refresh steps: step 0, and for the linear forecast step 2 as well (a line needs
    two refreshes after the warm-up, so that the timed reuse steps after it extrapolate, not hold)."""
    return [0, 2] if forecast == "linear" else [0]


def all_reuse_schedule(transformer: torch.nn.Module, steps: int, forecast: str) -> "delta_cache.Schedule":
    """Every block of every list reused on every step but `refreshes(forecast)`."""
    lists = {name: {"background_blocks": list(range(depth)), "refresh_steps": refreshes(forecast)}
             for name, depth in delta_cache.model_block_lists(transformer).items()}
    return delta_cache.Schedule.from_dict({"format_version": 1, "name": "all-reuse", "num_steps": steps,
                                           "forecast": forecast, "block_lists": lists})


@contextlib.contextmanager
def blocks_pass_through(transformer: torch.nn.Module):
    """Every block returns its input streams without computing: the cost of a call's non-block part."""
    from delta_cache import block_streams

    blocks = [block for name in delta_cache.model_block_lists(transformer) for block in getattr(transformer, name)]
    for block in blocks:
        metadata = block_streams.block_metadata(block)
        block.forward = lambda *args, _md=metadata, **kwargs: block_streams.pack_output(
            _md, block_streams.input_streams(_md, args, kwargs))
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward


def hook_cost(bench: Bench, latents, steps: int, forecast: str) -> float:
    """Seconds the cache adds to a call that skips every block: calls with every block reused against calls
    whose blocks do nothing, both timed over the steps after the last refresh (`refreshes`: those compute the
    deltas, and the linear forecast's line)."""
    untimed = refreshes(forecast)[-1] + 1
    if steps <= untimed:
        raise UserInputError(f"--steps {steps}: the hook cost needs more than {untimed} steps")
    with blocks_pass_through(bench.transformer):
        bare = denoise_loop(bench, latents, steps, untimed_steps=untimed)
    delta_cache.apply_delta_cache(bench.transformer, all_reuse_schedule(bench.transformer, steps, forecast),
                                  num_inference_steps=steps)
    try:
        reused = denoise_loop(bench, latents, steps, untimed_steps=untimed)
    finally:
        delta_cache.remove_delta_cache(bench.transformer)
    return max(reused - bare, 0.0) / ((steps - untimed) * len(bench.branches))


def main() -> None:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="wan", choices=sorted(FAMILIES), help="model family (default wan)")
    p.add_argument("--tokens", type=positive_int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--schedule", default=None,
                   help="preset name or schedule JSON (default: wan2.1-t2v-14b / hunyuanvideo-720p)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="blocks (wan, default 40) / double-stream blocks (hunyuan_video, default 20)")
    p.add_argument("--single_layers", type=positive_int, default=40, help="hunyuan_video single-stream blocks")
    p.add_argument("--dim", type=positive_int, default=64, help="hidden size (heads * head_dim)")
    p.add_argument("--heads", type=positive_int, default=2)
    p.add_argument("--ffn", type=positive_int, default=256,
                   help="feed-forward width (hunyuan_video: mlp ratio = ffn / dim)")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps, at least 2")
    p.add_argument("--no_cfg", action="store_true", help="wan: one branch per step instead of cond + uncond")
    p.add_argument("--image_task", default="none", choices=["none", "i2v", "flf2v"],
                   help="wan: the image-to-video transformer (i2v: 257 CLIP image tokens, flf2v: 2 x 257)")
    p.add_argument("--image_dim", type=positive_int, default=1280, help="wan --image_task: CLIP feature width")
    p.add_argument("--vace", action="store_true", help="wan: the VACE transformer (control blocks, 96-channel control input)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (1 keeps CPU timings stable)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the blocks (compile_repeated_blocks) in both runs; compilation is untimed")
    args = p.parse_args()
    if (args.image_task != "none" or args.vace) and args.family != "wan":
        p.error("--image_task and --vace are for --family wan")
    if args.image_task != "none" and args.vace:
        p.error("--vace and --image_task are two transformers; choose one")
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is untimed)")
    if args.dim % args.heads or (args.dim // args.heads) % 2:
        p.error(f"--dim {args.dim} must split into --heads {args.heads} heads of an even width (rotary embedding)")
    torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    make_bench, default_schedule = FAMILIES[args.family]
    schedule = delta_cache.load_schedule(args.schedule or default_schedule)  # a bad file fails before the build
    if not args.compile and args.steps <= refreshes(schedule.forecast)[-1] + 1:
        raise UserInputError(f"--steps {args.steps}: the hook cost of a {schedule.forecast}-forecast schedule needs "
                             f"more than {refreshes(schedule.forecast)[-1] + 1} steps")
    bench = make_bench(args, dtype)
    schedule.check_fits(delta_cache.model_block_lists(bench.transformer))  # (before the table starts)
    if args.compile:
        bench.transformer.compile_repeated_blocks()

    compiled = ", blocks compiled" if args.compile else ""
    print(f"{bench.description}, schedule '{schedule.name}', {args.device} {args.dtype}{compiled}")
    print("| tokens | uncached s | cached s | measured speedup | ideal speedup | measured/ideal | delta buffers / activation "
          "| hook cost per skipped block |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tokens in args.tokens:
        frames, height, width = latent_grid(tokens)
        real_tokens = frames * (height // 2) * (width // 2)
        latents = torch.randn(1, bench.in_channels, frames, height, width, device=args.device, dtype=dtype)
        denoise_loop(bench, latents, 2)  # warm-up (allocator, kernels; with --compile, the plain blocks compile here)
        plain = denoise_loop(bench, latents, args.steps)
        # num_inference_steps: for pipelines that pass no step index (HunyuanVideo) the cache counts calls
        handle = delta_cache.apply_delta_cache(bench.transformer, schedule, num_inference_steps=args.steps)
        try:
            if args.compile:  # the hooked blocks compile their refresh and reuse variants here, untimed
                denoise_loop(bench, latents, args.steps)
                handle.reset_stats()
            cached = denoise_loop(bench, latents, args.steps)
            stats = handle.stats()
        finally:
            delta_cache.remove_delta_cache(bench.transformer)
        activation_bytes = real_tokens * args.dim * torch.finfo(dtype).bits // 8
        measured = plain / cached
        if args.compile:  # the pass-through blocks would compile inside the timed loop
            cost = "n/a (--compile)"
        else:
            full_call = plain / (args.steps * len(bench.branches))
            per_call = hook_cost(bench, latents, args.steps, schedule.forecast)
            num_blocks = sum(delta_cache.model_block_lists(bench.transformer).values())
            cost = f"{per_call / num_blocks * 1e6:.1f} µs (all {num_blocks}: {per_call / full_call:.2%} of a call)"
        print(f"| {real_tokens} | {plain:.2f} | {cached:.2f} | {measured:.2f}x | {stats['ideal_speedup']:.2f}x | "
              f"{measured / stats['ideal_speedup']:.2f} | {stats['delta_memory_bytes'] / activation_bytes:.1f} | {cost} |")


if __name__ == "__main__":
    run_cli(main)
