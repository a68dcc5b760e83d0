"""Measured vs ideal speedup of the delta cache, in one run (prints, never asserts).

For each token count, a random-weight Wan transformer (real diffusers class, 40 blocks by default so the
paper preset applies) runs a CFG denoising loop (cond + uncond call per step, each in its diffusers
`cache_context`, as WanPipeline does) without and with the cache. Latency does not depend on weight
values, so random weights measure the real code path. The ratio measured/ideal shows the hooks' overhead.

    python scripts/bench_cache.py                      # CPU: 256, 1024, 4096 tokens
    python scripts/bench_cache.py --device cuda --dim 1536 --heads 12 --ffn 8960 --tokens 32760
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import delta_cache  # noqa: E402


def latent_grid(tokens: int) -> tuple[int, int, int]:
    """(frames, height, width) of a latent whose patchified (1, 2, 2) token count is about `tokens`."""
    frames = 1 if tokens <= 1024 else 4
    side = max(1, round((tokens / frames) ** 0.5))
    return frames, 2 * side, 2 * side


def denoise_loop(transformer, latents, text, steps: int, cfg: bool) -> float:
    """Seconds for `steps` steps of cond (+ uncond) transformer calls, each in its cache_context."""
    sync = torch.cuda.synchronize if latents.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for step in range(steps):
            timestep = torch.full((latents.shape[0],), 1000.0 * (1 - step / steps), device=latents.device)
            for branch in ("cond", "uncond") if cfg else ("cond",):
                with transformer.cache_context(branch, step_index=step, num_inference_steps=steps):
                    transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                                return_dict=False)
    sync()
    transformer._reset_stateful_cache()  # what a pipeline does at the end of a generation
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--schedule", default="wan2.1-t2v-14b", help="preset name or schedule JSON")
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--dim", type=int, default=64, help="hidden size (heads * head_dim)")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2, help="alternating uncached/cached runs per size; best of each")
    p.add_argument("--no_cfg", action="store_true", help="one branch per step instead of cond + uncond")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps CPU timings stable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import WanTransformer3DModel

    dtype = getattr(torch, args.dtype)
    head_dim = args.dim // args.heads
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=64, freq_dim=256, ffn_dim=args.ffn, num_layers=args.layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    ).to(args.device, dtype).eval()
    schedule = delta_cache.load_schedule(args.schedule)
    text = torch.randn(1, 32, 64, device=args.device, dtype=dtype)
    cfg = not args.no_cfg

    print(f"Wan transformer: {args.layers} blocks, dim {args.dim}, {args.steps} steps, "
          f"{'CFG' if cfg else 'no CFG'}, schedule '{schedule.name}', {args.device} {args.dtype}")
    print("| tokens | uncached s | cached s | measured speedup | ideal speedup | measured/ideal | delta buffers / activation |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for tokens in args.tokens:
        frames, height, width = latent_grid(tokens)
        real_tokens = frames * (height // 2) * (width // 2)
        latents = torch.randn(1, 16, frames, height, width, device=args.device, dtype=dtype)
        denoise_loop(transformer, latents, text, 2, cfg)  # warm-up (allocator, kernels)
        # Alternate uncached and cached runs and keep each one's best: slow drifts on a shared
        # machine then hit both sides alike.
        plain_times, cached_times = [], []
        for _ in range(args.repeats):
            plain_times.append(denoise_loop(transformer, latents, text, args.steps, cfg))
            handle = delta_cache.apply_delta_cache(transformer, schedule)
            try:
                cached_times.append(denoise_loop(transformer, latents, text, args.steps, cfg))
                stats = handle.stats()
            finally:
                delta_cache.remove_delta_cache(transformer)
        plain, cached = min(plain_times), min(cached_times)
        activation_bytes = real_tokens * args.dim * torch.finfo(dtype).bits // 8
        measured = plain / cached
        print(f"| {real_tokens} | {plain:.2f} | {cached:.2f} | {measured:.2f}x | {stats['ideal_speedup']:.2f}x | "
              f"{measured / stats['ideal_speedup']:.2f} | {stats['delta_memory_bytes'] / activation_bytes:.1f} |")


if __name__ == "__main__":
    main()
