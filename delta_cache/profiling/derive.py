"""From a profile to a schedule (method.md section 4).

- Background blocks: blocks whose foreground ratio R (mean over steps and prompts) is below `tau`.
- Warm-up: the steps before the noise prediction's step-to-step change settles, i.e. the first step
  whose change is at most `settle_factor` x the median change.
- Refresh steps after the warm-up, by one of two rules:
  - `eq15`: the paper's Eq. 15 generator, a linearly shrinking interval
    T_s = T_max - (T_max - T_min) * (s - s0) / (S - s0), rounded, so refreshes get denser towards the end;
  - `curve`: from the step-change curve: a step is computed once the change accumulated since the last
    refresh reaches `refresh_threshold` (TeaCache's rule, but decided once from the profile, so the
    schedule stays static: every prompt and every GPU computes the same steps).
- `derive_for_target`: searches tau, the refresh rule's parameters (T_max and T_min, or the threshold) and
  (unless given) the warm-up length, from 1 step to a fifth of the steps plus the curve's value, for
  schedules whose block evaluations are within `tolerance` of total / target_speedup, and returns the one
  with the least predicted error (`Profile.candidate_error`).

A profile of a transformer that runs part of a generation (Wan 2.2's experts) is derived on its own steps, and
the schedule placed into the run's (`Profile.run_schedule`): its own warm-up and refresh steps, every block
computed on the other transformer's steps; its predicted compute and speedup count its own steps only.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from ..schedule import FORECASTS, BlockListSchedule, Schedule
from .profile import Profile

REFRESH_RULES = ("eq15", "curve")


@dataclass(frozen=True)
class DerivationParams:
    tau: float
    t_max: int = 6
    t_min: int = 2
    warmup: int | None = None  # None: from the step-change curve
    settle_factor: float = 2.0
    refresh_threshold: float | None = None  # given: refresh by the curve rule; None: by Eq. 15 (t_max, t_min)
    forecast: str = "hold"  # what reuse steps add (schedule.FORECASTS)

    @property
    def refresh_rule(self) -> str:
        return "eq15" if self.refresh_threshold is None else "curve"


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


def refresh_steps_from_curve(output_change: np.ndarray, num_steps: int, warmup: int, threshold: float) -> list[int]:
    """Steps 0..warmup-1, then every step at which the change accumulated since the last refresh reaches
    `threshold`; output_change[i] is the change from step i to i + 1."""
    if not threshold > 0:
        raise UserInputError(f"the refresh threshold must be > 0, got {threshold}")
    if len(output_change) != num_steps - 1:
        raise UserInputError(f"the step-change curve has {len(output_change)} values, expected {num_steps - 1}")
    warmup = max(1, min(warmup, num_steps))
    steps = list(range(warmup))
    accumulated = 0.0
    for step in range(warmup, num_steps):
        accumulated += float(output_change[step - 1])
        if accumulated >= threshold:
            steps.append(step)
            accumulated = 0.0
    return steps


def curve_thresholds(output_change: np.ndarray, warmup: int) -> np.ndarray:
    """Thresholds that give every distinct `refresh_steps_from_curve` sequence after this warm-up: the
    accumulation resets at each refresh, so the sequence changes only where the threshold crosses a sum of
    consecutive curve values; one threshold at each such sum, and one above them all (no refresh after the
    warm-up), covers them all."""
    values = np.asarray(output_change[max(warmup - 1, 0):], dtype=np.float64)
    sums = [np.cumsum(values[start:]) for start in range(len(values))]
    return np.unique(np.concatenate([*sums, [2.0 * float(values.sum()) + 1.0]]))


def derive_schedule(profile: Profile, params: DerivationParams, name: str = "profiled") -> Schedule:
    """The schedule for `params`, with its provenance, predicted compute and predicted error."""
    candidate, warmup = _build(profile, params)
    computed, total = candidate.predicted_block_evals(profile.depths, profile.num_steps)
    provenance = dict(profile.provenance)
    refresh = ({"t_max": params.t_max, "t_min": params.t_min} if params.refresh_threshold is None
               else {"refresh_threshold": params.refresh_threshold})
    provenance.update({"source": "profiled", "tau": params.tau, "refresh_rule": params.refresh_rule, **refresh,
                       "warmup_steps": warmup, "settle_factor": params.settle_factor, "forecast": params.forecast,
                       "predicted_block_evals": [computed, total], "predicted_speedup": round(total / computed, 4),
                       "predicted_error": round(profile.candidate_error(candidate), 6)})
    refresh_text = (f"refresh intervals {params.t_max} -> {params.t_min}" if params.refresh_threshold is None else
                    f"refreshed where the step change accumulates to {params.refresh_threshold:.4g}")
    description = (f"Profiled schedule: blocks with foreground ratio < {params.tau:.3f} cached; warm-up {warmup} "
                   f"steps; {refresh_text}.")
    if params.forecast != "hold":
        description += f" Reuse steps extrapolate the deltas ({params.forecast} forecast)."
    if profile.covers_part_of_run:
        first, last, run_steps = profile.own_steps[0], profile.own_steps[-1], profile.step_window[1]
        provenance["profiled_steps"] = [first, last]
        description += (f" Made for steps {first}-{last} of {run_steps} (the steps this transformer runs; warm-up and "
                        f"refresh steps counted from step {first}); every block is computed on the other steps.")
    return profile.run_schedule(Schedule(name=name, num_steps=profile.num_steps, block_lists=candidate.block_lists,
                                         description=description, provenance=provenance, forecast=params.forecast))


def derive_for_target(profile: Profile, target_speedup: float, tolerance: float = 0.05,
                      warmup: int | None = None, settle_factor: float = 2.0, name: str = "profiled",
                      refresh_rules: tuple[str, ...] = REFRESH_RULES, forecasts: tuple[str, ...] = ("hold",),
                      max_block_evals: int | None = None) -> Schedule:
    """The schedule with the least predicted error whose compute is within `tolerance` of the budget (and, with
    `max_block_evals`, at most that many block evaluations per branch on the profiled steps)."""
    if target_speedup < 1.0:
        raise UserInputError(f"--target_speedup must be >= 1, got {target_speedup}")
    unknown = set(refresh_rules) - set(REFRESH_RULES)
    if not refresh_rules or unknown:
        raise UserInputError(f"refresh rules must be among {', '.join(REFRESH_RULES)}, got {list(refresh_rules)}")
    if not forecasts or set(forecasts) - set(FORECASTS):
        raise UserInputError(f"forecasts must be among {', '.join(FORECASTS)}, got {list(forecasts)}")
    total = sum(profile.depths.values()) * profile.num_steps
    budget = total / target_speedup
    block_ratios = {name: profile.block_foreground_ratio(name) for name in profile.depths}
    ratios = np.concatenate(list(block_ratios.values()))
    taus = np.unique(np.concatenate([ratios + 1e-6, [0.0]]))  # every distinct cut through the blocks
    # The curve says where the prediction settles, not what a reuse there costs: the warm-up is searched too.
    warmups = [warmup] if warmup is not None else sorted(
        {warmup_from_curve(profile.output_change(), settle_factor), *range(1, max(1, profile.num_steps // 5) + 1)})
    best, best_error = None, float("inf")
    for refresh_params in _refresh_candidates(profile, warmups, refresh_rules, settle_factor):
        for tau, forecast in itertools.product(taus, forecasts):
            params = dataclasses.replace(refresh_params, tau=float(tau), forecast=forecast)
            candidate, _ = _build(profile, params, block_ratios)
            computed, _ = candidate.predicted_block_evals(profile.depths, profile.num_steps)
            if abs(computed - budget) > tolerance * budget or (max_block_evals is not None
                                                                and computed > max_block_evals):
                continue
            error = profile.candidate_error(candidate)
            if error < best_error:
                best, best_error = params, error
    if best is None:
        own = profile.own_steps
        which = (f" of {profile.provenance.get('transformer', 'the transformer')} (its steps {own[0]}-{own[-1]} of "
                 f"{profile.step_window[1]})" if profile.covers_part_of_run else "")
        raise UserInputError(f"no schedule reaches {target_speedup}x within {tolerance:.0%} on this profile{which} "
                             f"({total} block evaluations); try a smaller target or a longer warm-up")
    schedule = derive_schedule(profile, best, name=name)
    schedule.provenance["target_speedup"] = target_speedup
    schedule.provenance["searched_refresh_rules"] = list(refresh_rules)
    schedule.provenance["searched_forecasts"] = list(forecasts)
    return schedule


@dataclass(frozen=True)
class ScheduleComparison:
    """A given schedule (a preset, one made for another model or fine-tune) on a profile, next to the schedule
    the profile gives at the same compute or less: whether the given one transfers, as far as the prediction
    tells."""

    name: str
    computed: int  # block evaluations per branch on the profiled steps
    total: int
    predicted_error: float
    profiled: Schedule | None  # least predicted error at no more compute (within 5% below); None: none there
    where: str = ""  # which steps the counts are of, where that is not simply the schedule's own run
    always_computed: int = 0  # evaluations outside any schedule (VACE's control blocks), for the ideal speedup

    @property
    def line(self) -> str:
        extra = self.always_computed
        text = (f"{self.name}{self.where}: {self.computed}/{self.total} block evaluations per branch (ideal "
                f"{(self.total + extra) / (self.computed + extra):.2f}x), predicted residual error "
                f"{self.predicted_error:.4f}")
        if self.profiled is None:
            return text + ("; reuses nothing on these steps" if self.computed == self.total else
                           "; no profiled schedule within 5% below its compute")
        computed, _ = self.profiled.provenance["predicted_block_evals"]
        return (text + f"; profiled at no more compute ({computed} evaluations): "
                       f"{self.profiled.provenance['predicted_error']:.4f}")


def compare_on_profile(profile: Profile, schedule: Schedule,
                       refresh_rules: tuple[str, ...] = REFRESH_RULES) -> ScheduleComparison:
    """`schedule` on `profile`: its compute and predicted error on the profiled steps (mapped as the cache runs it:
    another step count by the step-count rule, an expert's steps), and the profiled schedule with the least
    predicted error at no more compute (within 5% below it) and the same forecast, to tell whether a preset or a
    base model's schedule transfers to the profiled model (a fine-tune, another size or step count) or
    re-profiling pays."""
    schedule.check_fits(profile.depths)
    computed, total = profile.predicted_block_evals(schedule)
    profiled = None
    if computed < total:
        try:
            profiled = derive_for_target(profile, total / computed, name=f"profiled at {schedule.name}'s compute",
                                         refresh_rules=refresh_rules, forecasts=(schedule.forecast,),
                                         max_block_evals=computed)
        except UserInputError:  # (no candidate within 5% below this budget)
            profiled = None
    run_steps, own = profile.step_window[1], profile.own_steps
    where = []
    if schedule.num_steps != run_steps:
        where.append(f"made for {schedule.num_steps} steps, run at {run_steps}")
    if profile.covers_part_of_run:
        where.append(f"on {profile.provenance.get('transformer', 'the transformer')}'s steps {own[0]}-{own[-1]}")
    always = sum((profile.provenance.get("always_computed_block_evals") or {}).values())
    return ScheduleComparison(schedule.name, computed, total, profile.predicted_error(schedule), profiled,
                              f" ({'; '.join(where)})" if where else "", always)


def _refresh_candidates(profile: Profile, warmups, refresh_rules, settle_factor: float):
    """Parameters (tau left at 0) for every distinct refresh sequence the rules give after these warm-ups."""
    seen = set()
    curve = profile.output_change()
    for candidate_warmup in warmups:
        options = []
        if "eq15" in refresh_rules:
            options += [DerivationParams(tau=0.0, t_max=t_max, t_min=t_min, warmup=candidate_warmup,
                                         settle_factor=settle_factor)
                        for t_max in range(2, 17) for t_min in range(1, min(t_max, 6) + 1)]
        if "curve" in refresh_rules:
            options += [DerivationParams(tau=0.0, warmup=candidate_warmup, settle_factor=settle_factor,
                                         refresh_threshold=float(threshold))
                        for threshold in curve_thresholds(curve, candidate_warmup)]
        for params in options:
            steps = tuple(_refresh_steps(profile, params, candidate_warmup))
            if steps not in seen:  # the same steps under two rules: the first rule's parameters describe them
                seen.add(steps)
                yield params


def _refresh_steps(profile: Profile, params: DerivationParams, warmup: int) -> list[int]:
    if params.refresh_threshold is None:
        return refresh_steps_eq15(profile.num_steps, warmup, params.t_max, params.t_min)
    return refresh_steps_from_curve(profile.output_change(), profile.num_steps, warmup, params.refresh_threshold)


def _build(profile: Profile, params: DerivationParams, block_ratios: dict[str, np.ndarray] | None = None
           ) -> tuple[Schedule, int]:
    """The bare schedule for `params` and its warm-up length (`block_ratios`: the profile's per-block R, when
    the caller already has them)."""
    block_ratios = block_ratios or {name: profile.block_foreground_ratio(name) for name in profile.depths}
    warmup = params.warmup if params.warmup is not None else warmup_from_curve(profile.output_change(),
                                                                                params.settle_factor)
    warmup = max(1, min(warmup, profile.num_steps))  # (as the refresh rules use it)
    refresh = tuple(_refresh_steps(profile, params, warmup))
    block_lists = {
        name: BlockListSchedule(tuple(int(b) for b in np.flatnonzero(block_ratios[name] < params.tau)), refresh, depth)
        for name, depth in profile.depths.items()
    }
    return Schedule(name="candidate", num_steps=profile.num_steps, block_lists=block_lists,
                    forecast=params.forecast), warmup
