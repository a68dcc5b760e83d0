#!/usr/bin/env python
"""Write a random-weight tiny checkpoint folder for offline tests and demos.

    python scripts/make_tiny_checkpoint.py --family wan --out ckpts/tiny-wan [--layout diffusers] [--num_layers 40]

Each family is a module `delta_cache.models.<family>.tiny` with `write_tiny_checkpoint(out_dir, **options)`;
only the options given on the command line are passed, so every family keeps its own defaults.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from delta_cache.cli import OneLineArgumentParser, check_output_path, positive_int, run_cli  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402

FAMILIES = {"wan": "delta_cache.models.wan.tiny", "hunyuan_video": "delta_cache.models.hunyuan_video.tiny"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES), help="model family")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty)")
    parser.add_argument("--layout", choices=["upstream", "diffusers"], help="folder layout (default: upstream)")
    parser.add_argument("--num_layers", type=positive_int,
                        help="transformer blocks (default: the family's full-size count: wan 40, hunyuan_video 20 double-stream)")
    parser.add_argument("--num_single_layers", type=positive_int, help="hunyuan_video single-stream blocks (default 40)")
    parser.add_argument("--fp8", action="store_true", help="hunyuan_video: also write the fp8 weights and scale map")
    parser.add_argument("--shards", type=positive_int, help="transformer safetensors shards, upstream layout only (default 1)")
    parser.add_argument("--seed", type=int, help="weight seed (default 0)")
    parser.add_argument("--i2v", action="store_true", help="image-to-video variant (wan: adds the CLIP image encoder)")
    parser.add_argument("--flf2v", action="store_true",
                        help="first-last-frame-to-video variant (wan: i2v plus the two-frame image position embedding)")
    parser.add_argument("--vace", action="store_true",
                        help="VACE variant (wan: WanVACETransformer3DModel, for --task vace-*)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    options = {name: getattr(args, name) for name in ("layout", "num_layers", "num_single_layers", "shards", "seed") if getattr(args, name) is not None}
    for flag in ("i2v", "flf2v", "vace", "fp8"):
        if getattr(args, flag):
            options[flag] = True
    check_output_path("--out", args.out, folder=True)  # (the writers refuse a non-empty folder and bad options)
    family = importlib.import_module(FAMILIES[args.family])
    accepted = inspect.signature(family.write_tiny_checkpoint).parameters
    unknown = [f"--{name}" for name in options if name not in accepted]
    if unknown:
        raise UserInputError(f"{', '.join(unknown)} is not an option of the {args.family} family")
    out = family.write_tiny_checkpoint(args.out, **options)
    print(f"wrote tiny {args.family} checkpoint to {out} ({', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'}):")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)}  ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    run_cli(main)
