"""Figures and a markdown summary of a profile and the schedule derived from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plan import plan
from ..schedule import Schedule, compress_ranges
from .profile import Profile


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_foreground_ratio(profile: Profile, path: Path) -> None:
    """Heatmap of R over blocks x steps, one panel per block list (the paper's Fig. 2)."""
    plt = _pyplot()
    lists = profile.block_lists
    fig, axes = plt.subplots(1, len(lists), figsize=(6 * len(lists), 4.5), squeeze=False)
    for ax, list_name in zip(axes[0], lists):
        ratio = profile.foreground_ratio(list_name).T  # (blocks, steps)
        first = profile.step_window[0]  # (the run's step numbers, for a transformer that runs part of the run)
        image = ax.imshow(ratio, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1,
                          extent=(first - 0.5, first + ratio.shape[1] - 0.5, -0.5, ratio.shape[0] - 0.5))
        ax.set(title=f"foreground ratio R: {list_name}", xlabel="step", ylabel="block")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_step_change(profile: Profile, warmup: int, path: Path) -> None:
    """Relative change of the noise prediction between consecutive steps (the paper's Fig. 4)."""
    plt = _pyplot()
    change = profile.output_change()
    first = profile.step_window[0]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(first + np.arange(1, len(change) + 1), change, marker="o", markersize=3)
    ax.axvspan(first, first + warmup - 0.5, color="orange", alpha=0.2, label=f"warm-up ({warmup} steps)")
    ax.set(xlabel="step", ylabel="mean |v_s - v_(s-1)| / mean |v_(s-1)|", title="noise-prediction step change",
           yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_schedule(schedule: Schedule, depths: dict[str, int], path: Path, num_steps: int | None = None) -> None:
    """Blocks x steps grid of a run of `num_steps` (default: the schedule's own): computed (dark) or reused."""
    plt = _pyplot()
    num_steps = num_steps or schedule.num_steps
    lists = plan(schedule, depths, num_steps)
    fig, axes = plt.subplots(1, len(lists), figsize=(6 * len(lists), 4.5), squeeze=False)
    for ax, block_list in zip(axes[0], lists):
        grid = np.ones((block_list.depth, num_steps))
        reuse_steps = [s for s in range(num_steps) if s not in block_list.refresh_steps]
        for b in block_list.background_blocks:
            grid[b, reuse_steps] = 0
        ax.imshow(grid, aspect="auto", origin="lower", cmap="Blues", vmin=-0.3, vmax=1)
        ax.set_title(f"{schedule.name}: {block_list.name}\nat {num_steps} steps (dark = computed)", fontsize=10)
        ax.set(xlabel="step", ylabel="block")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def always_computed_note(provenance: dict, computed: int, total: int) -> str:
    """For a model with blocks outside the schedule (VACE's control blocks, provenance
    "always_computed_block_evals"): the ideal speedup with their evaluations counted in, else ""."""
    extra = provenance.get("always_computed_block_evals") or {}
    count = sum(extra.values())
    if not count:
        return ""
    return (f"; {(total + count) / (computed + count):.2f}x with the {count} evaluations of "
            f"{', '.join(extra)}, which run on every step")


def write_report(profile: Profile, schedule: Schedule, out_dir: str | Path, comparisons=()) -> list[Path]:
    """foreground_ratio.png, step_change.png, schedule.png and summary.md in `out_dir`; `comparisons`
    (`derive.compare_on_profile`'s) are listed in the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    warmup = int(schedule.provenance.get("warmup_steps", 1))
    paths = [out_dir / "foreground_ratio.png", out_dir / "step_change.png", out_dir / "schedule.png",
             out_dir / "summary.md"]
    plot_foreground_ratio(profile, paths[0])
    plot_step_change(profile, warmup, paths[1])
    plot_schedule(schedule, profile.depths, paths[2])
    computed, total = profile.predicted_block_evals(schedule)
    own = profile.own_steps
    steps = f"{profile.num_steps}"
    if profile.covers_part_of_run:
        steps += (f" (steps {own[0]}-{own[-1]} of the run's {profile.step_window[1]}: the ones this transformer runs; "
                  f"the counts below are of these)")
    lines = [
        f"# Profile and schedule `{schedule.name}`", "",
        f"- prompts: {len(profile.prompts)}; steps: {steps}; token grid (frames, h, w): "
        f"{profile.prompts[0].token_grid}",
        f"- block evaluations per branch: {computed}/{total} (ideal speedup {total / computed:.2f}x"
        f"{always_computed_note(schedule.provenance, computed, total)}); "
        f"predicted residual error {profile.predicted_error(schedule):.4f}",
        f"- warm-up: {warmup} steps; provenance: `{schedule.provenance}`", "",
        "| block list | background blocks | refresh steps | mean R of background | mean R of the others |",
        "|---|---|---|---|---|",
    ]
    for list_name, block_list in schedule.block_lists.items():
        ratio = profile.block_foreground_ratio(list_name)
        background = list(block_list.background_blocks)
        others = [b for b in range(len(ratio)) if b not in block_list.background_blocks]
        mean = lambda idx: f"{ratio[idx].mean():.3f}" if idx else "-"  # noqa: E731
        lines.append(f"| {list_name} | {compress_ranges(background)} | {compress_ranges(block_list.refresh_steps)} "
                     f"| {mean(background)} | {mean(others)} |")
    lines += ["", "Per-block foreground ratio R (mean over steps and prompts):", ""]
    for list_name in profile.block_lists:
        values = ", ".join(f"{b}:{r:.2f}" for b, r in enumerate(profile.block_foreground_ratio(list_name)))
        lines.append(f"- {list_name}: {values}")
    if comparisons:
        lines += ["", "Given schedules on this profile, each next to the profiled schedule of least predicted error at "
                  "its compute (the prediction ranks schedules of one compute, it does not give PSNR; "
                  "docs/profiling.md):", ""]
        lines += [f"- {comparison.line}" for comparison in comparisons]
    lines += ["", "Figures: `foreground_ratio.png` (R over blocks x steps), `step_change.png` (noise-prediction "
              "change per step), `schedule.png` (computed/reused grid).", ""]
    paths[3].write_text("\n".join(lines))
    return paths
