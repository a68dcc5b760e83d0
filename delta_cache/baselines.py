"""The methods `scripts/bench_fidelity.py` compares the delta cache with, and the tools to compare fairly.

Every method is a small object with `attach(transformer)` / `detach(transformer)` (detach returns the
method's own statistics for the run) and `describe()` (one line for the results table):

- `NoCache`: the reference.
- `DeltaCache`: ours (`delta_cache.apply_delta_cache`), for a uniform interface.
- `StepSkipping`: naive step skipping. On a skipped step the whole transformer call is replaced by the
  previous computed call's output of the same CFG branch (`StepSkippingHook`, a diffusers `ModelHook` on
  the transformer with one state per `cache_context` name, reset at the end of every pipeline call).
  `evenly_spread_steps` and `steps_for_block_budget` choose which steps to compute at a given compute.
- `TeaCache`: TeaCache (`delta_cache.teacache`, written from its description; there is none in diffusers),
  with the family's published coefficients or ones fitted on the model (`calibrate_teacache`).
- `FirstBlockCache`, `MagCache`: diffusers' own caches (`transformer.enable_cache(...)` /
  `disable_cache()`). `calibrate_mag_ratios` runs MagCache's calibrate=True mode and reads back the ratios
  it prints; `tune_threshold` searches a threshold for a target share of block evaluations.
- `CacheDiT`: cache-dit's DBCache (optional: `pip install cache-dit`), attached to the pipeline.

`BlockCounter` counts the block forwards that really run. It is a diffusers hook registered on every
block BEFORE any cache, so it sits innermost in each block's hook chain: a cache that skips a block never
calls into it. (A torch forward pre-hook would count skipped blocks too: the caches skip inside
`forward`, after torch's hooks have fired.)
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .generations import CallInfo, UnnamedBranches, advance
from .hooks import DEFAULT_BRANCH, apply_delta_cache, default_branch, model_block_lists, remove_delta_cache
from .schedule import compress_ranges

_COUNTER_HOOK = "bench_block_counter"
_STEP_SKIP_HOOK = "bench_step_skipping"


# --- counting real block evaluations ---------------------------------------------------------------------

class _CountingHook(ModelHook):
    """Stateless, no new_forward: only counts the calls that reach the block's own forward."""

    def __init__(self, counter: "BlockCounter", list_name: str):
        super().__init__()
        self.counter = counter
        self.list_name = list_name

    def pre_forward(self, module, *args, **kwargs):
        self.counter.counts[self.list_name] += 1
        return args, kwargs


class BlockCounter:
    """Counts real forward computations of every block of every block list of `transformer`.

    Install it before any cache (it raises otherwise): caches registered later wrap it, so it only sees
    the calls they let through. `count` is the running total over all lists; `counts` per list.
    """

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self.depths = model_block_lists(transformer)
        if not self.depths:
            raise ValueError(f"{type(transformer).__name__} has no registered transformer block lists to count")
        self.counts = dict.fromkeys(self.depths, 0)
        blocks = [(name, block) for name in self.depths for block in getattr(transformer, name)]
        for name, block in blocks:
            registry = getattr(block, "_diffusers_hook", None)
            if registry is not None and registry.hooks:
                raise ValueError(f"block of {name} already has hooks ({', '.join(registry.hooks)}): install the "
                                 "BlockCounter before any cache so that it counts only real block forwards")
        for name, block in blocks:
            HookRegistry.check_if_exists_or_initialize(block).register_hook(_CountingHook(self, name), _COUNTER_HOOK)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def blocks_per_call(self) -> int:
        """Block evaluations one uncached transformer call makes."""
        return sum(self.depths.values())

    def remove(self) -> None:
        """Remove the counting hooks (only valid once every cache has been removed again)."""
        for name in self.depths:
            for block in getattr(self.transformer, name):
                HookRegistry.check_if_exists_or_initialize(block).remove_hook(_COUNTER_HOOK, recurse=False)
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()


# --- the methods ---------------------------------------------------------------------------------------

class NoCache:
    name = "uncached"
    label = "uncached"

    def attach(self, transformer) -> None:
        pass

    def detach(self, transformer) -> dict:
        return {}

    def describe(self) -> str:
        return "reference"


class DeltaCache:
    """ProfilingDiT's delta cache with a schedule (preset name, path or `Schedule`)."""

    name = "delta_cache"
    label = "delta cache (ours)"

    def __init__(self, schedule, num_inference_steps: int):
        self.schedule = schedule
        self.num_inference_steps = num_inference_steps
        self._handle = None

    def attach(self, transformer) -> None:
        # The step count matters for pipelines that pass no step index (HunyuanVideo); harmless for Wan.
        self._handle = apply_delta_cache(transformer, self.schedule, num_inference_steps=self.num_inference_steps)

    def detach(self, transformer) -> dict:
        stats = self._handle.stats() if self._handle is not None else {}
        remove_delta_cache(transformer)
        self._handle = None
        return {"cache_reported_computed_block_evals": stats.get("computed_block_evals"),
                "cache_reported_total_block_evals": stats.get("total_block_evals")}

    def describe(self) -> str:
        name = getattr(self.schedule, "name", self.schedule)
        return f"schedule {name}"


class _StepSkipState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.num_calls = 0
        self.last_output = None
        self.step = 0
        self.last_call: CallInfo | None = None


class StepSkippingHook(ModelHook):
    """On the transformer: calls at steps outside `computed_steps` return the branch's last computed output."""

    _is_stateful = True

    def __init__(self, computed_steps, num_steps: int):
        super().__init__()
        self.computed_steps = frozenset(int(s) for s in computed_steps)
        self.num_steps = num_steps
        self.state_manager = StateManager(_StepSkipState)
        self.computed_calls = 0
        self.skipped_calls = 0
        self._unnamed = UnnamedBranches(DEFAULT_BRANCH)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        with default_branch(self.state_manager, self._unnamed, args, kwargs):
            state: _StepSkipState = self.state_manager.get_state()
            step = self._step(state, args, kwargs)
            if state.last_output is None or step in self.computed_steps or step >= self.num_steps:
                state.last_output = self.fn_ref.original_forward(*args, **kwargs)
                self.computed_calls += 1
                return state.last_output
            self.skipped_calls += 1
            return _clone_output(state.last_output)  # callers must not be able to alter the cached output

    @torch.compiler.disable  # (per-call Python decisions, as the delta cache's)
    def _step(self, state: _StepSkipState, args, kwargs) -> int:
        """This call's step, after a new generation's reset (an interrupted run, as the delta cache does)."""
        context = self.state_manager.context
        advance(state, CallInfo.of(args, kwargs, context.step_index), context.step_index, self.num_steps)
        return state.step

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self._unnamed.reset()
        return module


def _clone_output(output):
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, (tuple, list)):
        return type(output)(_clone_output(o) for o in output)
    return output


def apply_step_skipping(transformer: torch.nn.Module, computed_steps, num_steps: int) -> StepSkippingHook:
    """Attach naive step skipping: only `computed_steps` (0-based, of `num_steps`) run the transformer."""
    hook = StepSkippingHook(computed_steps, num_steps)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(hook, _STEP_SKIP_HOOK)
    registry.invalidate_child_registries_cache()
    return hook


def remove_step_skipping(transformer: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(_STEP_SKIP_HOOK, recurse=False)
    registry.invalidate_child_registries_cache()


def evenly_spread_steps(num_steps: int, num_computed: int) -> list[int]:
    """`num_computed` steps of `num_steps`, evenly spread, the first and the last step always included."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    num_computed = max(1, min(num_computed, num_steps))
    if num_computed == 1:
        return [0]
    spacing = (num_steps - 1) / (num_computed - 1)  # >= 1, so rounding half up keeps the steps distinct
    return [int(math.floor(i * spacing + 0.5)) for i in range(num_computed)]


def steps_for_block_budget(target_block_evals: float, blocks_per_call: int, calls_per_step: int,
                           num_steps: int) -> int:
    """How many computed steps make step skipping's block evaluations closest to `target_block_evals`
    (at least 2, the first and the last step, when there are 2 steps or more)."""
    per_step = blocks_per_call * calls_per_step
    best = round(target_block_evals / per_step)
    return max(min(2, num_steps), min(num_steps, best))


class StepSkipping:
    name = "step_skipping"
    label = "naive step skipping"

    def __init__(self, computed_steps, num_steps: int):
        self.computed_steps = sorted(int(s) for s in computed_steps)
        self.num_steps = num_steps
        self._hook = None

    def attach(self, transformer) -> None:
        self._hook = apply_step_skipping(transformer, self.computed_steps, self.num_steps)

    def detach(self, transformer) -> dict:
        hook, self._hook = self._hook, None
        remove_step_skipping(transformer)
        return {} if hook is None else {"computed_calls": hook.computed_calls, "skipped_calls": hook.skipped_calls}

    def describe(self) -> str:
        if len(self.computed_steps) <= 12:
            steps = ", ".join(str(s) for s in compress_ranges(self.computed_steps))
        else:
            steps = "evenly spread, first and last included"
        return f"{len(self.computed_steps)}/{self.num_steps} steps computed ({steps})"


class TeaCache:
    """TeaCache with `coefficients` (published, or fitted by `calibrate_teacache`) and a threshold."""

    name = "teacache"
    label = "TeaCache"

    def __init__(self, threshold: float, settings, num_steps: int, coefficients_source: str):
        from .teacache import TeaCacheConfig

        self.config = TeaCacheConfig(threshold=threshold, coefficients=tuple(settings.coefficients),
                                     indicator=settings.indicator, num_inference_steps=num_steps,
                                     first_computed_steps=settings.first_computed_steps,
                                     last_step_computed=settings.last_step_computed)
        self.coefficients_source = coefficients_source
        self.tuning: TuneResult | None = None
        self._handle = None

    def attach(self, transformer) -> None:
        from .teacache import apply_teacache

        self._handle = apply_teacache(transformer, self.config)

    def detach(self, transformer) -> dict:
        from .teacache import remove_teacache

        handle, self._handle = self._handle, None
        remove_teacache(transformer)
        return {} if handle is None else {"computed_calls": handle.stats.computed_calls,
                                          "skipped_calls": handle.stats.skipped_calls}

    def describe(self) -> str:
        text = f"threshold {self.config.threshold:.4g}, {self.config.indicator}, {self.coefficients_source} coefficients"
        return text + (f"; {self.tuning.summary()}" if self.tuning else "")


def calibrate_teacache(transformer, settings, num_steps: int, runs: list[Callable[[], None]]):
    """TeaCache's coefficient fit on this model: every call computed, (indicator change, output change)
    pairs over `runs` (generations), a degree-4 polynomial through them. Returns `settings` with it."""
    import dataclasses

    from .teacache import TeaCacheConfig, apply_teacache, fit_coefficients, remove_teacache

    handle = apply_teacache(transformer, TeaCacheConfig(threshold=0.0, coefficients=(1.0, 0.0),
                                                        indicator=settings.indicator, num_inference_steps=num_steps,
                                                        calibrate=True))
    try:
        for run in runs:
            run()
    finally:
        remove_teacache(transformer)
    return dataclasses.replace(settings, coefficients=tuple(fit_coefficients(handle.stats.calibration_pairs)))


class FirstBlockCache:
    """diffusers' FirstBlockCache (`enable_cache(FirstBlockCacheConfig(threshold))`)."""

    name = "first_block_cache"
    label = "FirstBlockCache (diffusers)"

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.tuning: TuneResult | None = None

    def attach(self, transformer) -> None:
        from diffusers.hooks import FirstBlockCacheConfig

        _enable_diffusers_cache(transformer, FirstBlockCacheConfig(threshold=self.threshold))

    def detach(self, transformer) -> dict:
        _disable_diffusers_cache(transformer)
        return {}

    def describe(self) -> str:
        return f"threshold {self.threshold:.4g}" + (f"; {self.tuning.summary()}" if self.tuning else "")


class MagCache:
    """diffusers' MagCache with magnitude ratios from `calibrate_mag_ratios` (defaults for the rest)."""

    name = "mag_cache"
    label = "MagCache (diffusers)"

    def __init__(self, threshold: float, mag_ratios: list[float], num_steps: int):
        self.threshold = threshold
        self.mag_ratios = list(mag_ratios)
        self.num_steps = num_steps
        self.tuning: TuneResult | None = None

    def config(self):
        from diffusers.hooks import MagCacheConfig

        return MagCacheConfig(threshold=self.threshold, num_inference_steps=self.num_steps,
                              mag_ratios=torch.tensor(self.mag_ratios, dtype=torch.float32))

    def attach(self, transformer) -> None:
        _enable_diffusers_cache(transformer, self.config())

    def detach(self, transformer) -> dict:
        _disable_diffusers_cache(transformer)
        return {}

    def describe(self) -> str:
        c = self.config()
        text = f"threshold {self.threshold:.4g}, max_skip_steps {c.max_skip_steps}, retention_ratio {c.retention_ratio}"
        return text + (f"; {self.tuning.summary()}" if self.tuning else "")


class CacheDiT:
    """cache-dit's DBCache (`cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(...))`, an optional
    dependency: `pip install cache-dit`), with cache-dit's defaults (the first 8 blocks always computed, none
    at the end, 8 warm-up steps) but the threshold. cache-dit attaches to the pipeline (it follows the CFG
    branches and steps through the pipeline's own call), so the method holds the pipeline; `attach` ignores
    the transformer it is given."""

    name = "cache_dit"
    label = "DBCache (cache-dit)"

    def __init__(self, pipe, threshold: float, num_steps: int):
        self.pipe = pipe
        self.threshold = threshold
        self.num_steps = num_steps
        self.tuning: TuneResult | None = None
        self._module_order: dict[torch.nn.Module, list[str]] = {}

    def config(self):
        os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # read once, at import: it warns on every attach
        try:
            from cache_dit import DBCacheConfig
        except ImportError as err:
            raise ImportError("cache-dit is not installed (pip install cache-dit)") from err

        return DBCacheConfig(residual_diff_threshold=self.threshold, num_inference_steps=self.num_steps)

    def attach(self, transformer) -> None:
        config = self.config()  # first: it sets cache-dit's log level and says when cache-dit is missing
        # cache-dit asserts this after it has begun patching the pipeline, which leaves it broken for the
        # methods after it: check first.
        depth = min(model_block_lists(transformer).values())
        if config.Fn_compute_blocks + config.Bn_compute_blocks >= depth:
            raise ValueError(f"cache-dit's F{config.Fn_compute_blocks}B{config.Bn_compute_blocks} needs more than "
                             f"{config.Fn_compute_blocks + config.Bn_compute_blocks} blocks in each block list; "
                             f"this model has {depth}")
        import cache_dit

        self._module_order = _child_order(self.pipe.transformer)
        try:
            cache_dit.enable_cache(self.pipe, cache_config=config)
        except Exception:
            self.detach(transformer)  # nothing half-attached stays for the next method
            raise

    def detach(self, transformer) -> dict:
        import cache_dit

        cache_dit.disable_cache(self.pipe)
        # cache-dit's disable_cache sets the block lists back as new attributes, so they come last among the
        # transformer's children (HunyuanVideo: single_transformer_blocks before transformer_blocks). The
        # children's order is the forward order that TeaCache and diffusers' FirstBlockCache read their first
        # block from (and model_block_lists its lists): restore it.
        _restore_child_order(self.pipe.transformer, self._module_order)
        return {}

    def describe(self) -> str:
        c = self.config()
        text = (f"threshold {self.threshold:.4g}, F{c.Fn_compute_blocks}B{c.Bn_compute_blocks}, "
                f"warm-up {c.max_warmup_steps} steps")
        return text + (f"; {self.tuning.summary()}" if self.tuning else "")


def _child_order(root: torch.nn.Module) -> dict[torch.nn.Module, list[str]]:
    """Every module's children's names, in order."""
    return {module: list(module._modules) for module in root.modules()}


def _restore_child_order(root: torch.nn.Module, order: dict[torch.nn.Module, list[str]]) -> None:
    for module in root.modules():
        names = [name for name in order.get(module, ()) if name in module._modules]
        for name in names:  # moving each to the end in the old order leaves them in that order
            module._modules[name] = module._modules.pop(name)


def _enable_diffusers_cache(transformer, config) -> None:
    """`transformer.enable_cache(config)`, after describing the video blocks diffusers' registry lacks
    (SkyReels-V2, HunyuanVideo 1.5), which its caches look up when they attach."""
    from .block_streams import register_video_blocks

    register_video_blocks()
    transformer.enable_cache(config)


def _disable_diffusers_cache(transformer) -> None:
    if getattr(transformer, "_cache_config", None) is not None:
        transformer.disable_cache()


_MAG_RATIOS_PRINTED = re.compile(r"Calibration Complete[^\n]*\n\s*(\[[^\]]*\])")


def calibrate_mag_ratios(transformer, num_steps: int, run: Callable[[], None]) -> list[float]:
    """MagCache's calibrate=True mode over one generation (`run()`); returns its magnitude ratios.

    diffusers prints the ratios of every CFG branch at the end of the run ("copy these values"); they are
    read from that output and averaged over branches step by step (MagCacheConfig takes one list).
    """
    from diffusers.hooks import MagCacheConfig

    printed = io.StringIO()
    _enable_diffusers_cache(transformer, MagCacheConfig(calibrate=True, num_inference_steps=num_steps))
    try:
        with contextlib.redirect_stdout(printed):
            run()
    finally:
        _disable_diffusers_cache(transformer)
    per_branch = [ast.literal_eval(match) for match in _MAG_RATIOS_PRINTED.findall(printed.getvalue())]
    per_branch = [ratios for ratios in per_branch if len(ratios) == num_steps]
    if not per_branch:
        raise RuntimeError(f"MagCache calibration printed no ratios for {num_steps} steps")
    return [float(sum(values) / len(values)) for values in zip(*per_branch)]


# --- threshold search ----------------------------------------------------------------------------------

@dataclass
class TuneResult:
    threshold: float
    reached: float  # share of block evaluations computed at `threshold` (calibration runs)
    target: float
    tolerance: float
    trials: list[tuple[float, float]] = field(default_factory=list)  # (threshold, share) in the order tried

    @property
    def within_tolerance(self) -> bool:
        return abs(self.reached - self.target) <= self.tolerance * self.target

    def summary(self) -> str:
        verdict = "" if self.within_tolerance else f", not within {self.tolerance:.0%}"
        runs = f"{len(self.trials)} run{'s' if len(self.trials) > 1 else ''}"
        return f"tuned: {self.reached:.1%} vs target {self.target:.1%} ({runs}{verdict})"


def tune_threshold(measure: Callable[[float], float], target: float, *, initial: float, tolerance: float = 0.05,
                   max_runs: int = 8, factor: float = 4.0) -> TuneResult:
    """Find a threshold whose share of computed block evaluations (`measure(threshold)`, falling as the
    threshold grows) is within `tolerance` (relative) of `target`.

    Starts at `initial`, multiplies or divides by `factor` until the target is bracketed, then bisects
    geometrically. Stops when within tolerance or after `max_runs` measurements, keeping the closest.
    """
    if max_runs < 1:
        raise ValueError(f"max_runs must be >= 1, got {max_runs}")
    too_much_compute = too_little_compute = None  # thresholds bracketing the target
    trials: list[tuple[float, float]] = []
    threshold = initial
    for _ in range(max_runs):
        share = measure(threshold)
        trials.append((threshold, share))
        if abs(share - target) <= tolerance * target:
            break
        if share > target:
            too_much_compute = threshold
        else:
            too_little_compute = threshold
        if too_little_compute is None:
            threshold = too_much_compute * factor
        elif too_much_compute is None:
            threshold = too_little_compute / factor
        else:
            threshold = math.sqrt(too_much_compute * too_little_compute)
    best_threshold, best_share = min(trials, key=lambda trial: (abs(trial[1] - target), trial[0]))
    return TuneResult(threshold=best_threshold, reached=best_share, target=target, tolerance=tolerance,
                      trials=trials)

