"""Score cached videos against the uncached ones the way the ProfilingDiT paper's table does.

Give the folder of uncached videos and one folder per method, with the same file names (e.g. the front ends
run with the same prompts, `--base_seed` / `--seed` and `--save_file` names, once without and once with
`--delta_cache`). For every video of the reference folder, each method's video of the same name is compared
frame by frame, after mp4 decoding as in the paper (docs/paper-protocol.md):

  PSNR     on uint8 RGB, per frame, averaged over frames, then over videos
  SSIM     the paper's variant: an 11x11 uniform window (bench_fidelity reports the usual Gaussian one)
  LPIPS    AlexNet, per frame; "n/a" unless torchvision and its AlexNet weights are on disk
  FID*     per video, Inception pool3 features of its frames against the reference's, then averaged (not a
           standard FID); "n/a" unless torch-fidelity and its Inception weights are on disk
  VBench*  the plain mean of the paper's 6 VBench dimensions, read from VBench's result files (--vbench);
           VBench itself runs separately (it needs its own models)

Nothing is downloaded.

    python scripts/score_videos.py --reference outputs/uncached --method delta_cache=outputs/delta_cache \\
        --vbench uncached=vbench/uncached_eval_results.json --vbench delta_cache=vbench/delta_eval_results.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # works without `pip install -e .` too

from delta_cache.cli import (  # noqa: E402
    OneLineArgumentParser, check_input_folder, check_output_path, positive_int, run_cli)
from delta_cache.errors import UserInputError  # noqa: E402

# The dimensions the paper averages (not VBench's weighted total).
VBENCH_DIMENSIONS = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
                     "aesthetic_quality", "imaging_quality")
REFERENCE = "uncached"


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="folder of the uncached videos (*.mp4)")
    p.add_argument("--method", action="append", required=True, metavar="NAME=FOLDER",
                   help="a method's videos, named as the reference's (repeat for several methods)")
    p.add_argument("--vbench", action="append", default=[], metavar="NAME=FILE",
                   help=f"VBench's result JSON for '{REFERENCE}' or a method (repeat); VBench* is their mean of "
                        f"{', '.join(VBENCH_DIMENSIONS)}")
    p.add_argument("--fid_weights", default=None,
                   help="torch-fidelity's Inception weights file (default: where torch.hub would keep its download)")
    p.add_argument("--device", default="cpu", help="where LPIPS and FID* run (default cpu)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default=None, help="also write the table (markdown) and the per-video scores (JSON) here")
    return p


def _named(values: list[str], flag: str) -> dict[str, str]:
    named = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserInputError(f"--{flag} {value}: expected NAME=PATH")
        if name in named:
            raise UserInputError(f"--{flag}: {name} is given twice")
        named[name] = path
    return named


def read_vbench_star(path: str | Path) -> float:
    """The paper's VBench*: the plain mean of its six dimensions from a VBench result file, whose entries are
    `dimension: [score, per-video details]` (or a bare score)."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserInputError(f"--vbench {path}: not a readable JSON file ({str(err).splitlines()[0]})") from None
    if not isinstance(results, dict):
        raise UserInputError(f"--vbench {path}: expected VBench's results, an object of dimension -> score")
    missing = [d for d in VBENCH_DIMENSIONS if d not in results]
    if missing:
        raise UserInputError(f"--vbench {path}: no score for {', '.join(missing)} (VBench* averages "
                             f"{', '.join(VBENCH_DIMENSIONS)})")
    scores = []
    for dimension in VBENCH_DIMENSIONS:
        value = results[dimension]
        value = value[0] if isinstance(value, list) and value else value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserInputError(f"--vbench {path}: the {dimension} score is not a number ({value!r})")
        scores.append(float(value))
    return sum(scores) / len(scores)


def _pairs(reference: Path, methods: dict[str, Path]) -> list[str]:
    check_input_folder("--reference", reference)
    names = sorted(p.name for p in reference.glob("*.mp4"))
    if not names:
        raise UserInputError(f"--reference {reference}: no .mp4 videos in it")
    for method, folder in methods.items():
        check_input_folder("--method", folder, value=f"{method}={folder}")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise UserInputError(f"--method {method}={folder}: no {missing[0]} (every video of --reference needs "
                                 f"its counterpart{f'; {len(missing) - 1} more missing' if len(missing) > 1 else ''})")
    return names


def _read(path: Path):
    from delta_cache.video import read_video

    try:
        return read_video(path)
    except (OSError, ValueError, RuntimeError) as err:
        raise UserInputError(f"{path}: not a readable video ({str(err).strip().splitlines()[0]})") from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    methods = {name: Path(folder) for name, folder in _named(args.method, "method").items()}
    if REFERENCE in methods:
        raise UserInputError(f"--method: '{REFERENCE}' names the reference (--reference)")
    vbench_files = _named(args.vbench, "vbench")
    unknown = [name for name in vbench_files if name != REFERENCE and name not in methods]
    if unknown:
        raise UserInputError(f"--vbench {unknown[0]}: not '{REFERENCE}' or a --method name")
    vbench = {name: read_vbench_star(path) for name, path in vbench_files.items()}  # bad files fail first
    if args.out:
        check_output_path("--out", args.out, folder=True)
    names = _pairs(Path(args.reference), methods)

    import torch
    from tqdm import tqdm

    from delta_cache.metrics import fidelity, make_lpips, make_video_fid, paper_ssim
    from delta_cache.metrics import format_metric, mean_of_present

    torch.set_num_threads(args.threads)
    lpips, lpips_note = make_lpips(args.device)
    fid, fid_note = make_video_fid(args.device, weights_path=args.fid_weights)
    scores = {method: [] for method in methods}
    for name in tqdm(names, desc="videos", unit="video"):
        reference = _read(Path(args.reference) / name)
        for method, folder in methods.items():
            video = _read(folder / name)
            if video.shape != reference.shape:
                raise UserInputError(f"{folder / name}: {video.shape[0]} frames of {video.shape[2]}x{video.shape[1]}, "
                                     f"the reference {reference.shape[0]} of {reference.shape[2]}x{reference.shape[1]}")
            scores[method].append({
                "video": name, "psnr": fidelity(video, reference).psnr, "ssim": paper_ssim(video, reference),
                "lpips": lpips(video, reference) if lpips else None, "fid": fid(video, reference) if fid else None})

    lines = [f"{len(names)} videos against `{args.reference}`; PSNR on uint8 frames, SSIM with an 11x11 uniform "
             f"window; LPIPS {'AlexNet' if lpips else f'n/a ({lpips_note})'}; FID* "
             f"{'per video, Inception pool3' if fid else f'n/a ({fid_note})'}; VBench* the mean of "
             f"{len(VBENCH_DIMENSIONS)} dimensions.", "",
             "| method | VBench* | LPIPS | PSNR | SSIM | FID* |", "|---|---:|---:|---:|---:|---:|",
             f"| {REFERENCE} | {format_metric(vbench.get(REFERENCE), '.4f')} | - | - | - | - |"]
    identical = {}
    for method, rows in scores.items():
        # (a video identical to its reference has an infinite PSNR: left out of the mean and counted, as
        # bench_fidelity.py does, else one such video makes the method's mean infinite)
        identical[method] = sum(math.isinf(row["psnr"]) for row in rows)
        psnr = [row["psnr"] for row in rows if not math.isinf(row["psnr"])]
        means = {"psnr": (sum(psnr) / len(psnr)) if psnr else (math.inf if rows else None),
                 **{key: mean_of_present([row[key] for row in rows]) for key in ("lpips", "ssim", "fid")}}
        cells = [format_metric(vbench.get(method), ".4f")] + [
            format_metric(means[key], spec)
            for key, spec in (("lpips", ".4f"), ("psnr", ".2f"), ("ssim", ".4f"), ("fid", ".2f"))]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    lines += [f"\nPSNR of {method}: {count} of {len(scores[method])} videos identical to the reference (infinite), "
              f"left out of its mean." for method, count in identical.items() if count]
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores.md").write_text(table + "\n")
        finite = {method: [{k: "inf" if isinstance(v, float) and math.isinf(v) else v for k, v in row.items()}
                           for row in rows] for method, rows in scores.items()}  # (JSON has no infinity)
        (out / "scores.json").write_text(json.dumps({"reference": args.reference, "vbench_star": vbench,
                                                     "videos": finite}, indent=2, allow_nan=False) + "\n")
        print(f"wrote {out / 'scores.md'} and {out / 'scores.json'}")


if __name__ == "__main__":
    run_cli(main)
