#!/usr/bin/env python
"""How well do the weight-free mask sources find the subjects of videos that show their prompt?

Renders the first --num_videos synthetic videos of --split (`make_video(i, split)`) at the checkpoint's
native size, encodes them with the checkpoint's own VAE (and decodes them again, the video a generation
would give), and prints one markdown table: the mean IoU of each mask source (the profiler's default video
motion mask, with each --cells count of cells per token side; the latent motion mask, with k fixed for each
--clusters k; the PCA mask) against the rendered masks on the token grid. The transformer is not run: this
measures the mask method apart from how well the model draws. `masks.MOTION_CLUSTERS` and
`masks.VIDEO_CELLS_PER_TOKEN` were chosen with it on the training split (docs/profiling.md). With --videos
generated, the model instead generates each prompt (seed i, uncached, the front end's default sampler
settings) and the masks of its final latents and decoded video are scored against the foreground of its
decoded frames, the true masks of scripts/profile_evidence.py (about 25 s a video for the tiny Wan model on
one CPU thread).

    python scripts/check_masks.py --family wan --split train
    python scripts/check_masks.py --family wan --split eval --videos generated
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
    p.add_argument("--split", choices=["train", "eval"], default="train",
                   help="synthetic videos to render, or whose prompts to generate (default train: where the mask "
                        "settings were chosen)")
    p.add_argument("--videos", choices=["rendered", "generated"], default="rendered",
                   help="rendered synthetic videos through the VAE (default), or the model's own generations")
    p.add_argument("--num_videos", type=positive_int, default=16, help="videos make_video(i, split), i < N (16)")
    p.add_argument("--clusters", type=positive_int, nargs="+", default=[2, 3, 4, 5, 6],
                   help="cluster counts k of the latent motion mask to compare, each held fixed (default 2 3 4 5 6)")
    p.add_argument("--cells", type=positive_int, nargs="*", default=[1, 2, 4, 8],
                   help="cells per token side of the video motion mask to compare (default 1 2 4 8)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads")
    return p


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    args = build_parser().parse_args(argv)
    ckpt = tiny_checkpoint_dir(args)
    set_offline()

    import torch

    from delta_cache.models.runner import load_runner
    from delta_cache.models.tiny_info import native_size
    from delta_cache.profiling.mask_check import (encode_rendered, generate_videos, markdown_table, mask_sources,
                                                  score_sources)

    torch.set_num_threads(args.threads)
    native = native_size(ckpt)
    if native is None:
        raise UserInputError(f"{ckpt} has no tiny_model.json: this check renders the synthetic videos a tiny "
                             "trained model was trained on, at its native size")
    sources = mask_sources(args.clusters, args.cells)
    runner = load_runner(args.family, ckpt, width=native.width, height=native.height, num_frames=native.num_frames)
    with torch.no_grad():
        if args.videos == "generated":
            videos = generate_videos(runner, args.split, args.num_videos)
        else:
            videos = encode_rendered(runner, args.split, args.num_videos)
    scores = score_sources(videos, sources, runner.patch)
    left_out = sum(not v.truth.any() for v in videos)
    what = (f"its uncached generations of {args.split} prompts 0-{args.num_videos - 1} (seed = index)"
            if args.videos == "generated" else
            f"rendered {args.split} videos 0-{args.num_videos - 1}, encoded by its VAE,")
    truth = "the foreground of its decoded frames" if args.videos == "generated" else "the rendered masks"
    print(f"{ckpt}: {what} at {native.width}x{native.height}, {native.num_frames} frames; IoU against {truth} on "
          f"the {runner.token_grid} token grid (a token is foreground when half its pixels are)"
          + (f"; {left_out} videos whose mask covers no token left out" if left_out else "") + ":")
    print(markdown_table(scores))
    return scores


if __name__ == "__main__":
    run_cli(main)
