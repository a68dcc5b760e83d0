"""From a profile to a schedule (method.md section 4).

- Background blocks: blocks whose foreground ratio R (mean over steps and prompts) is below `tau`.
- Warm-up: the steps before the noise prediction's step-to-step change settles, i.e. the first step
  whose change is at most `settle_factor` x the median change.
- Refresh steps after the warm-up: the paper's Eq. 15 generator, a linearly shrinking interval
  T_s = T_max - (T_max - T_min) * (s - s0) / (S - s0), rounded, so refreshes get denser towards the end.
- `derive_for_target`: searches tau, T_max, T_min and (unless given) the warm-up length, from 1 step to
  a fifth of the steps plus the curve's value, for schedules whose block evaluations are within `tolerance`
  of total / target_speedup, and returns the one with the least predicted error (`Profile.predicted_error`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from ..schedule import BlockListSchedule, Schedule
from .profile import Profile


@dataclass(frozen=True)
class DerivationParams:
    tau: float
    t_max: int = 6
    t_min: int = 2
    warmup: int | None = None  # None: from the step-change curve
    settle_factor: float = 2.0


def warmup_from_curve(output_change: np.ndarray, settle_factor: float = 2.0) -> int:
    """Number of warm-up steps: change[i] is the change from step i to i+1; warm-up ends where it settles."""
    if len(output_change) == 0:
        return 1
    threshold = settle_factor * float(np.median(output_change))
    for i, change in enumerate(output_change):
        if change <= threshold:
            return i + 1  # steps 0..i are warm-up
    return len(output_change) + 1


def refresh_steps_eq15(num_steps: int, warmup: int, t_max: int, t_min: int) -> list[int]:
    """Steps 0..warmup-1, then refreshes at intervals shrinking linearly from t_max to t_min."""
    if not 1 <= t_min <= t_max:
        raise UserInputError(f"refresh intervals need 1 <= t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    warmup = max(1, min(warmup, num_steps))
    steps = list(range(warmup))
    step = warmup - 1
    while True:
        progress = (step - (warmup - 1)) / max(num_steps - warmup, 1)
        interval = max(1, round(t_max - (t_max - t_min) * progress))
        step += interval
        if step >= num_steps:
            return steps
        steps.append(step)


def derive_schedule(profile: Profile, params: DerivationParams, name: str = "profiled") -> Schedule:
    """The schedule for `params`, with its provenance, predicted compute and predicted error."""
    candidate, warmup = _build(profile, params)
    computed, total = candidate.predicted_block_evals(profile.depths, profile.num_steps)
    provenance = dict(profile.provenance)
    provenance.update({"source": "profiled", "tau": params.tau, "t_max": params.t_max, "t_min": params.t_min,
                       "warmup_steps": warmup, "settle_factor": params.settle_factor,
                       "predicted_block_evals": [computed, total], "predicted_speedup": round(total / computed, 4),
                       "predicted_error": round(profile.predicted_error(candidate), 6)})
    description = (f"Profiled schedule: blocks with foreground ratio < {params.tau:.3f} cached; warm-up {warmup} "
                   f"steps; refresh intervals {params.t_max} -> {params.t_min}.")
    return Schedule(name=name, num_steps=profile.num_steps, block_lists=candidate.block_lists,
                    description=description, provenance=provenance)


def derive_for_target(profile: Profile, target_speedup: float, tolerance: float = 0.05,
                      warmup: int | None = None, settle_factor: float = 2.0, name: str = "profiled") -> Schedule:
    """The schedule with the least predicted error whose compute is within `tolerance` of the budget."""
    if target_speedup < 1.0:
        raise UserInputError(f"--target_speedup must be >= 1, got {target_speedup}")
    total = sum(profile.depths.values()) * profile.num_steps
    budget = total / target_speedup
    ratios = np.concatenate([profile.block_foreground_ratio(n) for n in profile.block_lists])
    taus = np.unique(np.concatenate([ratios + 1e-6, [0.0]]))  # every distinct cut through the blocks
    # The curve says where the prediction settles, not what a reuse there costs: the warm-up is searched too.
    warmups = [warmup] if warmup is not None else sorted(
        {warmup_from_curve(profile.output_change(), settle_factor), *range(1, max(1, profile.num_steps // 5) + 1)})
    best, best_error = None, float("inf")
    for candidate_warmup, t_max, t_min, tau in itertools.product(warmups, range(2, 17), range(1, 7), taus):
        if t_min > t_max:
            continue
        params = DerivationParams(tau=float(tau), t_max=t_max, t_min=t_min, warmup=candidate_warmup,
                                  settle_factor=settle_factor)
        candidate, _ = _build(profile, params)
        computed, _ = candidate.predicted_block_evals(profile.depths, profile.num_steps)
        if abs(computed - budget) > tolerance * budget:
            continue
        error = profile.predicted_error(candidate)
        if error < best_error:
            best, best_error = params, error
    if best is None:
        raise UserInputError(f"no schedule reaches {target_speedup}x within {tolerance:.0%} on this profile "
                             f"({total} block evaluations); try a smaller target or a longer warm-up")
    schedule = derive_schedule(profile, best, name=name)
    schedule.provenance["target_speedup"] = target_speedup
    return schedule


def _build(profile: Profile, params: DerivationParams) -> tuple[Schedule, int]:
    """The bare schedule for `params` and its warm-up length."""
    warmup = params.warmup if params.warmup is not None else warmup_from_curve(profile.output_change(),
                                                                                params.settle_factor)
    refresh = tuple(refresh_steps_eq15(profile.num_steps, warmup, params.t_max, params.t_min))
    block_lists = {
        name: BlockListSchedule(tuple(int(b) for b in np.flatnonzero(profile.block_foreground_ratio(name) < params.tau)),
                                refresh, depth)
        for name, depth in profile.depths.items()
    }
    return Schedule(name="candidate", num_steps=profile.num_steps, block_lists=block_lists), warmup
