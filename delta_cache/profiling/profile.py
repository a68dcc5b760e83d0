"""Profiles: what one generation revealed (`PromptProfile`) and the average over prompts (`Profile`).

The foreground ratio of a block at a step (method.md section 4):

    R = |high-attention tokens inside the foreground mask| / |mask tokens|

computed per latent frame (frames with an empty mask are skipped) and averaged over frames; `Profile`
averages it over prompts. With the top `high_fraction` of tokens marked high-attention, a block that
attends uniformly has R close to `high_fraction`; foreground-focused blocks are above it.

A transformer that runs only some steps of a generation (Wan 2.2's experts: the high-noise one steps 0 to b - 1,
the low-noise one b to N - 1) is profiled on its own steps: its profile's steps are those, and `step_window` says
where they lie in the run; `run_schedule` places a schedule derived on them into the run's steps.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..schedule import Schedule, warmup_length
from .probe import ProbeRecord


@dataclass
class PromptProfile:
    prompt: str
    seed: int
    token_grid: tuple[int, int, int]
    mask: np.ndarray  # bool (frames, h, w)
    foreground_ratio: dict[str, np.ndarray]  # block list -> (steps, blocks)
    # block list -> (steps, blocks, tokens, dims); float32: real models' residuals can pass float16's 65504
    sketches: dict[str, np.ndarray]
    output_change: np.ndarray  # (steps - 1,)
    output_change_abs: np.ndarray  # (steps - 1,)
    first_step: int = 0  # the run's step index of this profile's first step
    total_steps: int | None = None  # the run's step count, where it has more steps than this profile (else None)

    @classmethod
    def from_record(cls, record: ProbeRecord, mask: np.ndarray, prompt: str, seed: int,
                    token_grid: tuple[int, int, int]) -> "PromptProfile":
        mask = np.asarray(mask, dtype=bool).reshape(token_grid)
        first_step, total_steps = _step_window(record)
        frames_with_mask = [f for f in range(token_grid[0]) if mask[f].any()]
        if not frames_with_mask:
            raise UserInputError(f"the foreground mask for prompt {prompt!r} is empty: nothing to profile against "
                                 f"(nothing moves in its video? another prompt or seed, or another mask source)")
        tokens = int(np.prod(token_grid))
        ratios = {}
        for list_name, steps in record.high_attention.items():
            ratio = np.zeros((len(steps), len(steps[0])), dtype=np.float32)
            for s, blocks in enumerate(steps):
                for b, bits in enumerate(blocks):
                    high = np.unpackbits(bits)[:tokens].astype(bool).reshape(token_grid)
                    per_frame = [(high[f] & mask[f]).sum() / mask[f].sum() for f in frames_with_mask]
                    ratio[s, b] = float(np.mean(per_frame))
            ratios[list_name] = ratio
        sketches = {name: np.asarray(steps, dtype=np.float32) for name, steps in record.sketches.items()}
        return cls(prompt=prompt, seed=seed, token_grid=tuple(token_grid), mask=mask, foreground_ratio=ratios,
                   sketches=sketches, output_change=np.asarray(record.output_change, dtype=np.float32),
                   output_change_abs=np.asarray(record.output_change_abs, dtype=np.float32),
                   first_step=first_step, total_steps=total_steps)

    def save(self, path: str | Path) -> None:
        arrays = {"mask": self.mask, "output_change": self.output_change, "output_change_abs": self.output_change_abs}
        for name in self.foreground_ratio:
            arrays[f"ratio/{name}"] = self.foreground_ratio[name]
            arrays[f"sketch/{name}"] = self.sketches[name]
        meta = {"prompt": self.prompt, "seed": self.seed, "token_grid": list(self.token_grid),
                "first_step": self.first_step, "total_steps": self.total_steps}
        path = Path(path)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, meta=json.dumps(meta), **arrays)
        tmp.replace(path)  # a crash never leaves a half-written profile that --resume would trust

    @classmethod
    def load(cls, path: str | Path) -> "PromptProfile":
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            ratio = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("ratio/")}
            sketch = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("sketch/")}
            return cls(prompt=meta["prompt"], seed=meta["seed"], token_grid=tuple(meta["token_grid"]),
                       mask=data["mask"], foreground_ratio=ratio, sketches=sketch,
                       output_change=data["output_change"], output_change_abs=data["output_change_abs"],
                       first_step=meta.get("first_step", 0), total_steps=meta.get("total_steps"))


def _step_window(record: ProbeRecord) -> tuple[int, int | None]:
    """(first step, the run's step count) of a record whose steps are a stretch of a longer run, as the pipeline's
    step indices say (Wan 2.2's experts); (0, None) for a record of every step, or where the indices do not say
    (no step index given, or a sampler that calls the transformer more than once a step)."""
    indices, total = record.step_indices, record.num_inference_steps
    if not indices or total is None:
        return 0, None
    first = indices[0]
    if indices != list(range(first, first + len(indices))) or first + len(indices) > total:
        return 0, None
    return (first, total) if (first, total) != (0, len(indices)) else (0, None)


@dataclass
class Profile:
    """The average over prompts, plus what schedule derivation needs."""

    prompts: list[PromptProfile]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        self._sums_cache: dict = {}  # the target search evaluates many schedules on the same block sets
        if not self.prompts:
            raise UserInputError("no prompt profiles to aggregate")

    @property
    def block_lists(self) -> list[str]:
        return list(self.prompts[0].foreground_ratio)

    @property
    def depths(self) -> dict[str, int]:
        return {name: ratio.shape[1] for name, ratio in self.prompts[0].foreground_ratio.items()}

    @property
    def num_steps(self) -> int:
        """The profiled steps (a transformer that runs part of a generation: its own, see `step_window`)."""
        return next(iter(self.prompts[0].foreground_ratio.values())).shape[0]

    @property
    def step_window(self) -> tuple[int, int]:
        """(the run's step index of the profile's first step, the run's step count): (0, num_steps) for a
        transformer that runs every step."""
        windows = {(p.first_step, p.total_steps or p.first_step + self.num_steps) for p in self.prompts}
        if len(windows) > 1:
            raise UserInputError(f"the prompts' profiles cover different steps of their runs "
                                 f"({', '.join(f'{a}-{a + self.num_steps - 1} of {n}' for a, n in sorted(windows))}): "
                                 f"profile every prompt with the same step count and sampler settings")
        return windows.pop()

    @property
    def own_steps(self) -> range:
        """The run's steps this profile covers (all of them for a transformer that runs every step)."""
        first, _ = self.step_window
        return range(first, first + self.num_steps)

    @property
    def covers_part_of_run(self) -> bool:
        """Whether the profiled transformer runs only some of the run's steps (one of Wan 2.2's experts)."""
        return self.step_window != (0, self.num_steps)

    def run_schedule(self, schedule: Schedule) -> Schedule:
        """A schedule made on the profile's steps, placed into the run's: its refresh steps shifted to the run's
        step indices, and every block computed on the steps outside the profile's (which this transformer does not
        run; if a run gives it more, they are computed). The same schedule for a transformer of every step."""
        if not self.covers_part_of_run:
            return schedule
        first, total = self.step_window
        last = first + self.num_steps
        outside = [*range(first), *range(last, total)]
        block_lists = {name: dataclasses.replace(bl, refresh_steps=tuple(sorted(
                           {*outside, *(s + first for s in bl.refresh_steps)})))
                       for name, bl in schedule.block_lists.items()}
        return dataclasses.replace(schedule, num_steps=total, block_lists=block_lists)

    def profile_schedule(self, schedule: Schedule) -> Schedule:
        """What `schedule` (on the run's steps, or another step count) does on the profile's steps, as the cache runs
        it (the inverse of `run_schedule` for a schedule placed by it): mapped to the run's step count (the
        step-count rule), restricted to the profile's steps, with the first of them computed (the transformer holds
        no delta before it)."""
        first, total = self.step_window
        last = first + self.num_steps
        block_lists = {name: dataclasses.replace(bl, refresh_steps=tuple({0, *(
                           s - first for s in bl.refresh_steps_for(total, schedule.num_steps) if first <= s < last)}))
                       for name, bl in schedule.block_lists.items()}
        return dataclasses.replace(schedule, num_steps=self.num_steps, block_lists=block_lists)

    def predicted_block_evals(self, schedule: Schedule) -> tuple[int, int]:
        """(computed, total) block evaluations of one branch of `schedule` (on the run's steps) on the profiled
        steps, as the cache runs it there."""
        from ..plan import block_evals_on_steps

        return block_evals_on_steps(schedule, self.depths, self.step_window[1], self.own_steps)

    def foreground_ratio(self, list_name: str) -> np.ndarray:
        """(steps, blocks), mean over prompts."""
        return np.mean([p.foreground_ratio[list_name] for p in self.prompts], axis=0)

    def block_foreground_ratio(self, list_name: str) -> np.ndarray:
        """(blocks,), mean over steps and prompts."""
        return self.foreground_ratio(list_name).mean(axis=0)

    def output_change(self) -> np.ndarray:
        return np.mean([p.output_change for p in self.prompts], axis=0)

    def predicted_error(self, schedule: Schedule) -> float:
        """Predicted error of `schedule` (on the run's steps) on the profiled steps (`candidate_error`), as the cache
        runs it there (`profile_schedule`), with the linear forecast's warm-up counted on the run's steps as the
        hooks count it."""
        first, total = self.step_window
        warmups = {name: warmup_length(bl.refresh_steps_for(total, schedule.num_steps)) - first
                   for name, bl in schedule.block_lists.items()}
        return self._error(self.profile_schedule(schedule), warmups)

    def candidate_error(self, candidate: Schedule) -> float:
        """Predicted error of the reused residuals of a schedule on the profile's own steps (derivation's
        candidates): per prompt, the sum over reuse steps of their relative drift (every reuse step adds its
        error; a mean over reuse steps would reward adding cheap ones); the mean over prompts.

        At a reuse step s with last refresh r, the cached blocks contribute B[r] (or, with the schedule's
        linear forecast, B[r] extrapolated through the refresh before r) instead of B[s], where B is
        the sum of the background blocks' residuals (deltas add up along the residual stream, so the run
        structure does not matter for this first-order estimate): drift = |B[s] - B[r]| / |sum of all
        residuals of the block list at s|. A first-order proxy: how the drift propagates through the later
        steps is not modelled (docs/profiling.md has how well it ranks measured schedules).
        """
        return self._error(candidate, None)

    def _error(self, schedule: Schedule, warmups: dict[str, int] | None) -> float:
        errors = []
        for index, prompt in enumerate(self.prompts):
            error = 0.0
            for list_name, block_list in schedule.block_lists.items():
                cached, total_norm = self._background_sums(index, list_name, block_list.background_blocks)
                steps = len(total_norm)
                # (the first step is computed whatever the schedule says: no delta is held before it)
                refresh_set = block_list.refresh_steps_for(steps, schedule.num_steps) | {0}
                refresh = sorted(refresh_set)
                warmup = warmup_length(refresh) if warmups is None else warmups[list_name]
                reuse = np.array([s not in refresh_set for s in range(steps)])
                if reuse.any():
                    reused = cached[reuse] - _forecast(cached, refresh, np.flatnonzero(reuse), schedule.forecast,
                                                       warmup)
                    error += float(np.sum(np.linalg.norm(reused, axis=1) / np.maximum(total_norm[reuse], 1e-12)))
            errors.append(error)
        return float(np.mean(errors))

    def _background_sums(self, prompt_index: int, list_name: str, background: tuple[int, ...]):
        """(sum of the background blocks' residual sketches per step (steps, T*D), |sum of all| per step)."""
        key = (prompt_index, list_name, tuple(background))
        if key not in self._sums_cache:
            sketch = self.prompts[prompt_index].sketches[list_name].astype(np.float32)
            flat = sketch.reshape(sketch.shape[0], sketch.shape[1], -1)  # (steps, blocks, T*D)
            cached = flat[:, list(background)].sum(axis=1)
            self._sums_cache[key] = (cached, np.linalg.norm(flat.sum(axis=1), axis=1))
        return self._sums_cache[key]


def _forecast(cached: np.ndarray, refresh: list[int], reuse_steps: np.ndarray, forecast: str,
              warmup: int) -> np.ndarray:
    """What the cache adds at each reuse step, as the hooks compute it (hooks.DeltaCacheBlockHook); `warmup`: the
    schedule's warm-up length in these steps' numbering (the run's, less the profile's first step)."""
    position = np.searchsorted(refresh, reuse_steps, side="right") - 1  # index of the last refresh
    last = np.asarray(refresh)[position]
    held = cached[last]
    if forecast != "linear":
        return held
    earlier = np.asarray(refresh)[np.maximum(position - 1, 0)]
    has_line = (position >= 1) & (earlier >= warmup - 1)  # no line through two warm-up steps (the hooks' rule)
    slope = np.where(has_line, (reuse_steps - last) / np.maximum(last - earlier, 1), 0.0)
    return held + (held - cached[earlier]) * slope[:, None]
