"""The README's demo: Wan2.1's `generate.py` on a tiny 40-block checkpoint, without and with `--delta_cache`.

Writes the tiny checkpoint (upstream file layout, random weights) on first use, runs the same upstream
command line twice through `Wan2.1/generate.py` (the second time plus `--delta_cache`), and prints the
measured speedup of the denoising loop next to the ideal one. Both mp4s land in --out.

    python scripts/demo.py [--out demo_output] [--frame_num 1] [--sample_steps 50]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a red square moves left on a blue background"


def run_generate(args: list[str], env: dict) -> str:
    """Run Wan2.1/generate.py, stream its output, return its summary line."""
    command = [sys.executable, str(REPO / "Wan2.1" / "generate.py"), *args]
    print("$ python Wan2.1/generate.py " + " ".join(f'"{a}"' if " " in a else a for a in args), flush=True)
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    return next(line for line in proc.stdout.splitlines() if line.startswith("denoising time"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "demo_output")
    p.add_argument("--frame_num", type=int, default=1, help="frames (4n+1); 1 keeps the CPU demo around a minute")
    p.add_argument("--sample_steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 gives stable CPU timings)")
    args = p.parse_args()

    ckpt = args.out / "tiny-wan-t2v-40blocks"
    if not (ckpt / "config.json").exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_checkpoint.py"), "--family", "wan",
                        "--out", str(ckpt), "--num_layers", "40"], check=True, stdout=subprocess.DEVNULL)
        print(f"wrote a tiny 40-block Wan2.1 checkpoint (upstream layout, random weights) to {ckpt}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    common = ["--task", "t2v-14B", "--size", "832*480", "--frame_num", str(args.frame_num), "--ckpt_dir", str(ckpt),
              "--prompt", PROMPT, "--base_seed", "42", "--sample_steps", str(args.sample_steps)]
    plain = run_generate(common + ["--save_file", str(args.out / "uncached.mp4")], env)
    cached = run_generate(common + ["--save_file", str(args.out / "delta_cache.mp4"), "--delta_cache"], env)

    seconds = [float(re.search(r"denoising time: ([\d.]+) s", line).group(1)) for line in (plain, cached)]
    ideal = float(re.search(r"ideal speedup ([\d.]+)x", cached).group(1))
    print(f"\nmeasured speedup of the denoising loop: {seconds[0] / seconds[1]:.2f}x "
          f"({seconds[0]:.1f} s -> {seconds[1]:.1f} s); ideal {ideal:.2f}x")
    print(f"videos: {args.out / 'uncached.mp4'}, {args.out / 'delta_cache.mp4'}")


if __name__ == "__main__":
    main()
