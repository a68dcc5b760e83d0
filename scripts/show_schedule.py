#!/usr/bin/env python
"""Show what a delta-cache schedule does in a run: the blocks it reuses, the steps that refresh them, and
the block evaluations it leaves per CFG branch, at the schedule's own step count or any other
(docs/schedule-format.md, "Other step counts"). Nothing is loaded or run.

    python scripts/show_schedule.py                                   # the presets
    python scripts/show_schedule.py wan2.1-t2v-14b --steps 30 --png wan14b_30.png
    python scripts/show_schedule.py my_schedule.json --depths blocks=30
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout without installing

from delta_cache.cli import OneLineArgumentParser, check_output_path, positive_int, run_cli  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.plan import describe, schedule_depths  # noqa: E402
from delta_cache.schedule import list_presets, load_schedule  # noqa: E402


def depth_flag(value: str) -> tuple[str, int]:
    name, _, depth = value.partition("=")
    if not name or not depth.isdigit() or int(depth) < 1:
        raise UserInputError(f"--depths takes LIST=BLOCKS (e.g. blocks=40), got {value!r}")
    return name, int(depth)


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("schedule", nargs="?", default=None,
                   help="a preset name or a schedule JSON file (none: list the presets)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="the run's sampling steps (default: the schedule's own)")
    p.add_argument("--depths", nargs="+", default=None, metavar="LIST=BLOCKS",
                   help="the model's block lists and depths, e.g. transformer_blocks=20 single_transformer_blocks=40 "
                        "(default: the num_blocks the schedule records)")
    p.add_argument("--png", type=Path, default=None, help="also draw the blocks x steps grid into this PNG file")
    return p


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    if args.schedule is None:
        text = "\n".join(f"{name}: {load_schedule(name).description}" for name in list_presets())
        print(text)
        return text
    schedule = load_schedule(args.schedule)
    depths = dict(map(depth_flag, args.depths)) if args.depths else schedule_depths(schedule)
    num_steps = args.steps or schedule.num_steps
    text = describe(schedule, depths, num_steps)  # (checks that the schedule fits the depths)
    if args.png is not None:
        if not args.png.parent.is_dir():
            raise UserInputError(f"--png {args.png}: expected a .png file in an existing folder")
        check_output_path("--png", args.png, suffixes=(".png",))
        from delta_cache.profiling.report import plot_schedule

        plot_schedule(schedule, depths, args.png, num_steps)
        text += f"\ngrid: {args.png}"
    print(text)
    return text


if __name__ == "__main__":
    run_cli(main)
