"""The README's demo: Wan2.1's `generate.py` on the tiny trained model, without and with `--delta_cache`.

Runs the same upstream command line four times through `Wan2.1/generate.py` (its `main`, in this process: one
interpreter start instead of four) on the committed tiny trained checkpoint (`checkpoints/tiny-wan2.1-t2v`: 40
blocks, upstream file layout, trained on synthetic moving shapes by scripts/train_tiny.py): uncached, plus
`--delta_cache` (the paper's preset), plus `--delta_cache --cache_schedule tiny-wan2.1-t2v-profiled` (the
schedule profiled on this model), and the same with `--cache_forecast linear` (reuse steps extrapolate the
deltas; same compute); then prints each cached run's measured speedup of the denoising loop next to the ideal
one, PSNR/SSIM against the uncached video, and what the shape analyser sees in each. The mp4s land in --out.

    python scripts/demo.py [--out demo_output] [--prompt "..."] [--seed 34] [--sample_steps 50]
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from delta_cache.cli import OneLineArgumentParser, check_output_path, positive_int, run_cli  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.front_ends import load_front_end  # noqa: E402
from delta_cache.models.tiny_info import committed_checkpoint  # noqa: E402

CKPT = committed_checkpoint("wan")
# A prompt from the grammar the tiny model was trained on (delta_cache/synthetic/prompts.py), with the seed of its
# held-out pair: the one pair of the 40 of scripts/check_quality.py that the committed model draws as prompted
# (eval pair 34; it draws 2.5% of them so, docs/tiny-models.md), so that the demo's videos show what they say.
PROMPT = "a yellow triangle moves down quickly on a gray background"
SEED = 34
# The schedule scripts/profile_model.py derived from this model (docs/profiling.md).
PROFILED_PRESET = "tiny-wan2.1-t2v-profiled"


def run_generate(generate_py, args: list[str]) -> str:
    """Run Wan2.1/generate.py's command line (as `python Wan2.1/generate.py ARGS` would: a bad input is one
    line and the exit code), echo its output, return its summary line."""
    print("$ python Wan2.1/generate.py " + " ".join(f'"{a}"' if " " in a else a for a in args), flush=True)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        run_cli(lambda: generate_py.main(args))
    print(output.getvalue(), end="", flush=True)
    return next(line for line in output.getvalue().splitlines() if line.startswith("denoising time"))


def describe(frames) -> str:
    """What the analyser sees: background and each object's colour, shape and motion."""
    from delta_cache.synthetic.analyse import analyse_video

    analysis = analyse_video(frames)
    objects = [f"a {o.colour} {o.shape} " + ("standing still" if o.direction == "static" else
                                             f"moving {o.direction} ({o.speed})") for o in analysis.objects]
    return f"{' and '.join(objects) or 'no object'} on a {analysis.background} background"


def main() -> None:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "demo_output")
    p.add_argument("--prompt", default=PROMPT, help="a prompt in the tiny model's grammar")
    p.add_argument("--seed", type=int, default=SEED, help=f"the runs' --base_seed (default {SEED})")
    p.add_argument("--sample_steps", type=positive_int, default=50)
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (1 gives stable CPU timings)")
    p.add_argument("--ckpt_dir", type=Path, default=CKPT, help="tiny trained checkpoint")
    args = p.parse_args()
    if not (args.ckpt_dir / "config.json").is_file():
        raise UserInputError(f"no tiny trained checkpoint in {args.ckpt_dir} (config.json missing); "
                             "train one with scripts/train_tiny.py or pass --ckpt_dir")
    check_output_path("--out", args.out, folder=True)

    import torch

    torch.set_num_threads(args.threads)
    generate_py = load_front_end("wan")
    # Size and frame count default to the checkpoint's native ones (tiny_model.json).
    common = ["--task", "t2v-14B", "--ckpt_dir", str(args.ckpt_dir), "--prompt", args.prompt,
              "--base_seed", str(args.seed), "--sample_steps", str(args.sample_steps)]
    # The paper's Wan2.1-14B preset (the --delta_cache default), then the schedule profiled on this model.
    runs = {
        "uncached": [],
        "delta_cache": ["--delta_cache"],
        "delta_cache_profiled": ["--delta_cache", "--cache_schedule", PROFILED_PRESET],
        "delta_cache_profiled_linear": ["--delta_cache", "--cache_schedule", PROFILED_PRESET,
                                        "--cache_forecast", "linear"],
    }
    paths = {name: args.out / f"{name}.mp4" for name in runs}
    summaries = {name: run_generate(generate_py, common + ["--save_file", str(paths[name])] + flags)
                 for name, flags in runs.items()}

    from delta_cache.metrics import fidelity
    from delta_cache.video import read_video

    videos = {name: read_video(path) for name, path in paths.items()}
    seconds = {name: float(re.search(r"denoising time: ([\d.]+) s", line).group(1))
               for name, line in summaries.items()}
    print(f"\nprompt: {args.prompt!r}")
    for name, label in (("delta_cache", "paper preset wan2.1-t2v-14b"), ("delta_cache_profiled", PROFILED_PRESET),
                        ("delta_cache_profiled_linear", f"{PROFILED_PRESET}, linear forecast")):
        ideal = float(re.search(r"ideal speedup ([\d.]+)x", summaries[name]).group(1))
        print(f"{name} ({label}): measured speedup of the denoising loop {seconds['uncached'] / seconds[name]:.2f}x "
              f"({seconds['uncached']:.1f} s -> {seconds[name]:.1f} s), ideal {ideal:.2f}x; "
              f"vs uncached video: {fidelity(videos[name], videos['uncached'])} (per frame, decoded mp4s)")
    for name, frames in videos.items():
        print(f"the analyser sees in {name}.mp4: {describe(frames)}")
    print("videos: " + ", ".join(str(path) for path in paths.values()))


if __name__ == "__main__":
    run_cli(main)
