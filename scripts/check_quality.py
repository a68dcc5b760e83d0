#!/usr/bin/env python
"""The tiny trained models' quality bar: do uncached samples show what held-out prompts ask for?

For the first --num_pairs evaluation scenes (`make_video(i, "eval")`: attribute combinations never used in
training; seed i), runs the family's front end exactly as a user would (`Wan2.1/generate.py` or
`HunyuanVideo/sample_video.py` at its defaults for the checkpoint: native size and frame count, 50 steps,
no cache), reads the written mp4 back and asks the analyser (delta_cache/synthetic/analyse.py) whether the
video agrees with the prompt: background, object count, and every object's colour, shape, direction and
speed. Prints the agreement and per-attribute accuracy; the bar is >= 90% agreement on 40 pairs.

    python scripts/check_quality.py --family wan --ckpt_dir checkpoints/tiny-wan2.1-t2v
    python scripts/check_quality.py --family hunyuan_video --ckpt_dir checkpoints/tiny-hunyuanvideo-t2v

Writes `quality_<family>.json` (per pair: prompt, seed, matches, the analyser's estimates) and
`quality_<family>.md` to --out; `--min_agreement X` exits with status 1 below X.

`--start_sigma S` (0 < S < 1) is a diagnostic, not the bar: each pair starts from its own rendered video,
encoded and noised to the sampler grid's first level <= S, and the front end's sampler (same loader, grid,
solver and guidance, through delta_cache.models.runner) runs the remaining steps; frames are analysed before
mp4 encoding. Run at a few levels, it shows which part of the denoising a model has not learned yet (a model
that keeps shapes from 0.3 but not from 0.6 lacks the mid-noise steps). Files get a `_sigma<S>` suffix.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from delta_cache.cli import (  # noqa: E402
    OneLineArgumentParser, bounded_float, check_output_path, positive_int, run_cli, set_offline)
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.front_ends import FRONT_ENDS, load_front_end  # noqa: E402
from delta_cache.models.tiny_info import tiny_checkpoint_dir  # noqa: E402

ATTRIBUTES = ("background", "count", "colour", "shape", "direction", "speed")
BAR = 0.9  # the quality bar: share of pairs whose video agrees with the prompt


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(FRONT_ENDS), default="wan")
    p.add_argument("--ckpt_dir", type=Path, help="tiny trained checkpoint (default: the committed one)")
    p.add_argument("--num_pairs", type=int, default=40, help="held-out prompt/seed pairs (default 40)")
    p.add_argument("--sample_steps", type=int, default=None, help="sampling steps (default: the front end's)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "quality")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads")
    p.add_argument("--min_agreement", type=bounded_float(0, 1), default=None, help="exit with status 1 below this share")
    p.add_argument("--start_sigma", type=float, default=None,
                   help="diagnostic: start each pair from its rendered video noised to this level (0 < S < 1)")
    return p


def front_end_command(family: str, ckpt: Path, prompt: str, seed: int, out_dir: Path,
                      steps: int | None) -> list[str]:
    """The user's command line for one uncached sample at the checkpoint's defaults."""
    if family == "wan":
        argv = ["--ckpt_dir", str(ckpt), "--prompt", prompt, "--base_seed", str(seed),
                "--save_file", str(out_dir / "video.mp4")]
        return argv + (["--sample_steps", str(steps)] if steps else [])
    from delta_cache.models.hunyuan_video.checkpoint import DIT_WEIGHT

    # Upstream reads the VAE and text encoders from $MODEL_BASE (set in main) and the transformer from --dit-weight.
    dit_weight = ckpt / DIT_WEIGHT
    argv = ["--model-base", str(ckpt), "--dit-weight", str(dit_weight), "--prompt", prompt, "--seed", str(seed),
            "--save-path", str(out_dir), "--flow-reverse"]
    return argv + (["--infer-steps", str(steps)] if steps else [])


def sample(front_end, family: str, ckpt: Path, prompt: str, seed: int, steps: int | None):
    """Run the front end in this process (quietly) and read its mp4 back as uint8 frames."""
    from delta_cache.video import read_video

    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            front_end.main(front_end_command(family, ckpt, prompt, seed, Path(tmp), steps))
        videos = sorted(Path(tmp).glob("*.mp4"))
        if len(videos) != 1:
            raise RuntimeError(f"expected one mp4 from the front end, found {len(videos)}")
        return read_video(videos[0])


def part_way_sampler(family: str, ckpt: Path, size, steps: int | None, sigma: float):
    """draw(video, seed) -> uint8 frames: the front end's sampling started from `video` noised to `sigma`."""
    from delta_cache.models.partial_denoising import StartBelowGrid
    from delta_cache.models.runner import load_runner

    runner = load_runner(family, ckpt, width=size.width, height=size.height, num_frames=size.num_frames,
                         num_steps=steps or 50)

    def draw(video, seed: int):
        try:
            latents, _ = runner.generate(video.prompt, seed, start=(runner.encode(video.frames), sigma))
        except StartBelowGrid as err:
            raise UserInputError(f"--start_sigma {sigma}: {err}") from None
        return runner.to_uint8(runner.decode(latents))

    return draw


def summarise(records: list[dict]) -> dict:
    n = len(records)
    return {
        "pairs": n,
        "agreement": sum(r["agrees"] for r in records) / n,
        "attributes": {a: sum(r["matches"][a] for r in records) / n for a in ATTRIBUTES},
        "one_object": _share([r for r in records if r["num_objects"] == 1]),
        "two_objects": _share([r for r in records if r["num_objects"] == 2]),
    }


def _share(records: list[dict]) -> dict:
    return {"pairs": len(records), "agreement": sum(r["agrees"] for r in records) / len(records) if records else None}


def markdown(family: str, ckpt: Path, summary: dict, start_sigma: float | None = None) -> str:
    if start_sigma is None:
        rows = [f"# Quality bar: {family} ({ckpt})", "",
                f"Held-out prompt/seed pairs: {summary['pairs']}; bar: >= {BAR:.0%} agreement."]
    else:
        rows = [f"# Denoising from sigma {start_sigma:g}: {family} ({ckpt})", "",
                f"Held-out prompt/seed pairs: {summary['pairs']}, each started from its own rendered video noised to "
                f"sigma {start_sigma:g} (a diagnostic, not the bar)."]
    rows += ["", "| measure | share |", "|---|---|",
             f"| **agrees with the prompt (all attributes)** | **{summary['agreement']:.1%}** |"]
    rows += [f"| {a} | {share:.1%} |" for a, share in summary["attributes"].items()]
    for key, label in (("one_object", "one-object prompts"), ("two_objects", "two-object prompts")):
        part = summary[key]
        if part["pairs"]:
            rows.append(f"| agreement, {label} ({part['pairs']}) | {part['agreement']:.1%} |")
    if start_sigma is None:
        rows += ["", f"The quality bar {'holds' if summary['agreement'] >= BAR else 'does NOT hold'}."]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    ckpt = tiny_checkpoint_dir(args)
    if args.num_pairs < 1:
        raise UserInputError(f"--num_pairs must be >= 1, got {args.num_pairs}")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise UserInputError(f"--sample_steps must be >= 1, got {args.sample_steps}")
    if args.start_sigma is not None and not 0.0 < args.start_sigma < 1.0:
        raise UserInputError(f"--start_sigma must be between 0 and 1 (exclusive), got {args.start_sigma}")
    check_output_path("--out", args.out, folder=True)
    set_offline()

    import torch
    from loguru import logger
    from tqdm import tqdm

    from delta_cache.synthetic.analyse import check_video
    from delta_cache.synthetic.videos import make_video

    torch.set_num_threads(args.threads)
    os.environ["MODEL_BASE"] = str(ckpt)  # HunyuanVideo's upstream layout: VAE and text encoders live there
    logger.remove()  # the front end logs every load and sample; the table is what matters here
    if args.start_sigma is None:
        front_end = load_front_end(args.family)
        size = {}  # the analyser reads any size; the front end samples at the checkpoint's native one

        def draw(video, seed: int):
            return sample(front_end, args.family, ckpt, video.prompt, seed, args.sample_steps)
    else:
        from delta_cache.models.tiny_info import native_size

        native = native_size(ckpt)  # the start videos must have the size the model samples
        if native is None:
            raise UserInputError(f"--start_sigma needs a tiny trained checkpoint (with tiny_model.json); {ckpt} has none")
        size = dict(num_frames=native.num_frames, height=native.height, width=native.width)
        draw = part_way_sampler(args.family, ckpt, native, args.sample_steps, args.start_sigma)
    records = []
    for index in tqdm(range(args.num_pairs), desc=f"quality {args.family}", dynamic_ncols=True):
        video = make_video(index, "eval", **size)
        frames = draw(video, index)
        check = check_video(frames, video.scene)
        records.append({
            "index": index, "seed": index, "prompt": video.prompt, "num_objects": len(video.scene.objects),
            "agrees": check.agrees, "matches": check.matches,
            "found": [{"colour": o.colour, "shape": o.shape, "direction": o.direction, "speed": o.speed}
                      for o in check.analysis.objects],
            "background_found": check.analysis.background,
        })
    summary = summarise(records)
    text = markdown(args.family, ckpt, summary, args.start_sigma)
    stem = f"quality_{args.family}" + ("" if args.start_sigma is None else f"_sigma{args.start_sigma:g}")
    if args.start_sigma is not None:
        summary["start_sigma"] = args.start_sigma
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in ((f"{stem}.md", text),
                          (f"{stem}.json", json.dumps({"summary": summary, "pairs": records}, indent=2) + "\n")):
        tmp = args.out / (name + ".tmp")
        tmp.write_text(content)
        tmp.replace(args.out / name)
    print(text, end="")
    if args.min_agreement is not None and summary["agreement"] < args.min_agreement:
        print(f"error: agreement {summary['agreement']:.1%} is below --min_agreement {args.min_agreement:.1%}",
              file=sys.stderr)
        sys.exit(1)
    return summary


if __name__ == "__main__":
    run_cli(main)
