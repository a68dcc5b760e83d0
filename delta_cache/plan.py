"""What a schedule does in a run of a given step count: per block list, the blocks it reuses, the run steps
that refresh them, and the block evaluations it leaves (the step-count rule of docs/schedule-format.md).

Printed by scripts/show_schedule.py; the front ends log its one-line total before sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ScheduleError
from .schedule import Schedule, compress_ranges


@dataclass(frozen=True)
class BlockListPlan:
    """One block list in a run of `num_steps` steps."""

    name: str
    depth: int
    num_steps: int
    background_blocks: tuple[int, ...]
    refresh_steps: tuple[int, ...]  # run steps on which every block is computed

    @property
    def reuse_steps(self) -> int:
        return self.num_steps - len(self.refresh_steps)

    @property
    def total(self) -> int:
        return self.depth * self.num_steps

    @property
    def computed(self) -> int:
        return self.total - len(self.background_blocks) * self.reuse_steps


def plan(schedule: Schedule, depths: dict[str, int], num_steps: int) -> list[BlockListPlan]:
    """The plan of every block list in `depths` (lists the schedule does not name are always computed; see
    `Schedule.check_fits` for whether the schedule fits those depths)."""
    plans = []
    for name, depth in depths.items():
        block_list = schedule.block_lists.get(name)
        if block_list is None:
            plans.append(BlockListPlan(name, depth, num_steps, (), tuple(range(num_steps))))
            continue
        refresh = tuple(sorted(block_list.refresh_steps_for(num_steps, schedule.num_steps)))
        plans.append(BlockListPlan(name, depth, num_steps, block_list.background_blocks, refresh))
    return plans


def block_evals_on_steps(schedule: Schedule, depths: dict[str, int], num_steps: int, steps: range) -> tuple[int, int]:
    """(computed, total) block evaluations per branch of a transformer that runs only `steps` of a run of
    `num_steps` (one of Wan 2.2's experts); its first step is computed whatever the schedule says (no delta yet)."""
    computed = total = 0
    for block_list in plan(schedule, depths, num_steps):
        refresh = set(block_list.refresh_steps) | {steps.start}
        total += block_list.depth * len(steps)
        computed += block_list.depth * len(steps) - len(block_list.background_blocks) * sum(
            1 for step in steps if step not in refresh)
    return computed, total


def schedule_depths(schedule: Schedule) -> dict[str, int]:
    """The depths a schedule file records (`num_blocks`); one line naming the list that has none."""
    missing = [name for name, bl in schedule.block_lists.items() if bl.num_blocks is None]
    if missing:
        raise ScheduleError(f"schedule '{schedule.name}' does not record num_blocks for {', '.join(missing)}; "
                            f"give the model's depths (e.g. --depths {missing[0]}=40)")
    return {name: bl.num_blocks for name, bl in schedule.block_lists.items()}


def _ranges(values) -> str:
    return ", ".join(str(v) for v in compress_ranges(values)) or "none"


def no_reuse_advice(schedule: Schedule, num_steps: int) -> str:
    """What to do when `schedule` reuses nothing at `num_steps`: it names no background block, or every step
    of the run falls on a refresh."""
    if not any(bl.background_blocks for bl in schedule.block_lists.values()):
        return "it names no background block, so it never reuses: list some, or profile a schedule (docs/profiling.md)"
    return f"profile a schedule for {num_steps} steps with scripts/profile_model.py (docs/profiling.md)"


def _is_step_span(value, num_steps: int) -> bool:
    """A provenance's `profiled_steps`: [first, last] within the run's steps."""
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
            and 0 <= value[0] <= value[1] < num_steps)


def describe(schedule: Schedule, depths: dict[str, int], num_steps: int) -> str:
    """A readable account of the plan: what is reused where, and the block evaluations per CFG branch."""
    schedule.check_fits(depths)
    plans = plan(schedule, depths, num_steps)
    lines = [f"schedule '{schedule.name}': made for {schedule.num_steps} steps, forecast {schedule.forecast}"]
    if schedule.description:
        lines.append(f"  {schedule.description}")
    lines.append(f"in a run of {num_steps} steps:")
    for p in plans:
        lines.append(f"  {p.name} ({p.depth} blocks): reuses {len(p.background_blocks)} background blocks "
                     f"[{_ranges(p.background_blocks)}] on {p.reuse_steps} of {num_steps} steps; every block is "
                     f"computed on steps [{_ranges(p.refresh_steps)}]; {p.computed}/{p.total} block evaluations")
    computed, total = sum(p.computed for p in plans), sum(p.total for p in plans)
    lines.append(f"  per CFG branch: {computed}/{total} block evaluations, ideal speedup {total / computed:.2f}x")
    own = schedule.provenance.get("profiled_steps")
    if num_steps == schedule.num_steps and _is_step_span(own, num_steps):
        # (a schedule for one of Wan 2.2's experts: the other steps are the other expert's, computed here on paper)
        own_computed, own_total = block_evals_on_steps(schedule, depths, num_steps, range(own[0], own[1] + 1))
        lines.append(f"  made for a transformer that runs steps {own[0]}-{own[1]} (Wan 2.2's experts): on those, "
                     f"{own_computed}/{own_total} block evaluations, ideal speedup {own_total / own_computed:.2f}x")
    if computed == total:
        lines.append(f"  it reuses nothing at {num_steps} steps: {no_reuse_advice(schedule, num_steps)}")
    return "\n".join(lines)
