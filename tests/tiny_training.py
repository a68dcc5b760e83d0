"""The tiny training settings and helpers that the training tests share (scripts/train_tiny.py in-process)."""

from pathlib import Path

from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent

train_tiny = load_script(REPO / "scripts" / "train_tiny.py")

# The smallest settings that still exercise every stage (seconds on one CPU thread).
TINY = ["--threads", "1", "--device", "cpu", "--vae_steps", "2", "--dit_steps", "4", "--batch_size", "2",
        "--vae_batch_size", "1", "--num_videos", "4", "--num_layers", "2", "--num_heads", "2", "--head_dim", "12",
        "--ffn_dim", "32", "--vae_base_dim", "4", "--num_frames", "9", "--height", "64", "--width", "64",
        "--vae_frames", "5", "--vae_crop", "32", "--checkpoint_every", "2", "--warmup_steps", "1",
        "--vae_check_videos", "0"]  # no VAE round-trip check (5 s of a 7 s run); its tests ask for it


def run(out, *extra):
    """train_tiny with the TINY settings, writing `out`; returns its summaries."""
    return train_tiny.main(["--out", str(out), *TINY, *extra])


def run_in_slices(run, out, until=lambda summaries: False, resume: bool = False) -> int:
    """Run with the smallest time budget (one step or stage per call), resuming until done or `until`;
    returns the number of calls."""
    for calls in range(1, 30):
        summaries = run(out, "--stop_after_minutes", "1e-9", *(["--resume"] if resume or calls > 1 else []))
        if "paused" not in summaries or until(summaries):
            return calls
    raise AssertionError("the run never finished")
