#!/usr/bin/env python
"""Can the transformer write every latent direction? Noise left in samples along the ones it cannot.

Samples the first --num_pairs held-out prompt/seed pairs (`make_video(i, "eval")`, seed i) with the front
end's sampler (delta_cache.models.runner, the family's defaults at the checkpoint's native size), records
every transformer output on the way, and measures the subspace those outputs span per token (channels x
patch; delta_cache/models/output_subspace.py). Then compares, inside and outside that subspace, the
variance per direction of the generated latents with that of the same pairs' rendered videos encoded by the
VAE. A transformer narrower than a token (the width-48 tiny previews: 48 < 64) leaves the starting noise
untouched outside: unit variance there, where real latents have little. A wide enough one prints a rank
equal to the token size and nothing outside; for any width, the variance of the samples along the
--quiet_directions directions in which the encoded videos vary least shows how much noise sampling left.

    python scripts/check_output_rank.py --family wan --ckpt_dir checkpoints/tiny-wan2.1-t2v
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from delta_cache.cli import OneLineArgumentParser, positive_int, run_cli, set_offline  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.models.tiny_info import add_tiny_checkpoint_flags, tiny_checkpoint_dir  # noqa: E402


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    add_tiny_checkpoint_flags(p)
    p.add_argument("--num_pairs", type=int, default=4, help="held-out prompt/seed pairs (default 4)")
    p.add_argument("--sample_steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--quiet_directions", type=int, default=16,
                   help="also compare variance along the encoded videos' N least-varying token directions (16)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    ckpt = tiny_checkpoint_dir(args)
    if min(args.num_pairs, args.sample_steps, args.quiet_directions) < 1:
        raise UserInputError("--num_pairs, --sample_steps and --quiet_directions must be >= 1")
    set_offline()

    import torch
    from tqdm import tqdm

    from delta_cache.models.output_subspace import (
        captured_outputs,
        patch_tokens,
        quietest_directions,
        variance_along,
        written_subspace,
    )
    from delta_cache.models.runner import load_runner
    from delta_cache.models.tiny_info import native_size
    from delta_cache.synthetic.videos import make_video

    torch.set_num_threads(args.threads)
    native = native_size(ckpt)
    if native is None:
        raise UserInputError(f"{ckpt} has no tiny_model.json: this diagnostic compares with the synthetic videos "
                             "a tiny trained model was trained on")
    runner = load_runner(args.family, ckpt, width=native.width, height=native.height,  # (Wan: task t2v-14B)
                         num_frames=native.num_frames, num_steps=args.sample_steps)
    token_size = runner.transformer.config.in_channels * runner.patch[0] * runner.patch[1]
    if args.quiet_directions > token_size:
        raise UserInputError(f"--quiet_directions {args.quiet_directions}: a token has only {token_size} values")
    encoded, generated, outputs = [], [], []
    with torch.no_grad():
        for index in tqdm(range(args.num_pairs), desc="samples", dynamic_ncols=True):
            video = make_video(index, "eval", num_frames=native.num_frames, height=native.height,
                               width=native.width)
            encoded.append(patch_tokens(runner.encode(video.frames), runner.patch))
            with captured_outputs(runner.transformer) as calls:
                latents, _ = runner.generate(video.prompt, index)
            generated.append(patch_tokens(latents, runner.patch))
            outputs += [patch_tokens(call, runner.patch) for call in calls]
    subspace = written_subspace(torch.cat(outputs), computed_in=runner.transformer.dtype)
    encoded, generated = torch.cat(encoded), torch.cat(generated)
    # Whatever the width: noise a sampler failed to remove shows where real latents hardly vary.
    quiet = quietest_directions(encoded, args.quiet_directions)
    result = {
        "token_size": subspace.token_size, "rank": subspace.rank,
        "encoded": subspace.variance_split(encoded), "generated": subspace.variance_split(generated),
        "quiet": (variance_along(encoded, quiet), variance_along(generated, quiet)),
    }
    print(f"{ckpt}: the transformer's outputs span {subspace.rank} of the {subspace.token_size} values of a token "
          f"({len(outputs)} calls, {args.num_pairs} pair(s))")
    print("variance per direction (inside the written subspace / outside it):")
    for name, label in (("encoded", "rendered videos, encoded"), ("generated", "generated samples")):
        inside, outside = result[name]
        print(f"  {label:26s} {inside:.3f} / " + ("-" if outside is None else f"{outside:.3f}"))
    print(f"variance per direction along the {args.quiet_directions} directions in which the encoded videos vary "
          f"least: encoded {result['quiet'][0]:.3f}, generated {result['quiet'][1]:.3f}")
    if subspace.rank < subspace.token_size:
        unwritten = subspace.token_size - subspace.rank
        print(f"The other {unwritten} directions are never written: the samples keep the starting noise there "
              f"(a model that never writes {unwritten} of {subspace.token_size} has a flow-matching loss of at least "
              f"{unwritten / subspace.token_size:.2f}).")
    return result


if __name__ == "__main__":
    run_cli(main)
