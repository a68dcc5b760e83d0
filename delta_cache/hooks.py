"""The delta cache, attached to a diffusers transformer with diffusers' own hook machinery.

Two kinds of hooks share one `StateManager`, so every `cache_context` branch ("cond", "uncond", ...)
gets its own `BranchState` (its own deltas), exactly like diffusers' built-in caches:

- `DeltaCacheRootHook` on the transformer: at each call it works out the step (the pipeline's
  `step_index` when given, else its own per-branch call counter) and decides, per block list, whether this
  is a refresh step. The decision depends only on (step, block list), so every GPU decides alike.
- `DeltaCacheBlockHook` on each background block: on refresh steps the block runs and the hook on the
  first/last block of a run records `delta = output(last) - input(first)` (overwriting, never
  accumulating); on reuse steps the run is skipped and the first block returns `input + delta` for every
  stream the block carries (image and text tokens for HunyuanVideo), the others pass their input through.
  With the schedule's linear forecast the added delta is extrapolated through the last two refreshes
  (`DeltaCacheBlockHook._forecast_deltas`; docs/schedule-format.md). Where the model itself adds something
  between two blocks of a run (`additions_between_blocks`: VACE's control hints), the refresh step measures
  the addition and leaves it out of the delta, since the model adds it afresh on reuse steps too.
Foreground blocks get no hook at all.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from . import block_streams
from .errors import UserInputError
from .generations import CallInfo, UnnamedBranches, advance, refuse_diffusion_forcing
from .schedule import Schedule, load_schedule, warmup_length
from .stats import DeltaCacheStats

_ROOT_HOOK = "delta_cache_root"
_BLOCK_HOOK = "delta_cache_block"
_HANDLE_ATTR = "_delta_cache_handle"
DEFAULT_BRANCH = "default"  # branch name for calls made outside any `cache_context`


@contextlib.contextmanager
def default_branch(state_manager: StateManager, unnamed: UnnamedBranches | None = None, args=(), kwargs=None):
    """A cache root hook's call, in its branch. Calls made outside any `cache_context` (a plain transformer call) run
    as the DEFAULT_BRANCH branch, or, with `unnamed` (which reads the call's `args` and `kwargs`), as the branch it
    names: a step's second call on the same latents with another text (a negative prompt's) as DEFAULT_BRANCH_2.
    A call cut short (Ctrl-C, out of memory) resets every branch and the naming: its generation cannot go on, and a
    rerun's first calls must neither count as its next steps nor look like a second branch of their timestep."""
    owns_context = state_manager._context is None
    if owns_context:
        name = DEFAULT_BRANCH if unnamed is None else unnamed.name(args, kwargs or {})
        state_manager.set_context(CacheContext(name))
    try:
        yield
    except BaseException:
        state_manager.reset()
        if unnamed is not None:
            unnamed.reset()
        raise
    finally:
        if owns_context:
            state_manager.set_context(None)


def detach_hooks(transformer: torch.nn.Module, root_hook: str, child_hooks: tuple[str, ...], handle_attr: str) -> None:
    """Remove a cache's root hook, its hooks on submodules and its handle; the transformer is as before."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(root_hook, recurse=False)
    for name in child_hooks:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    if hasattr(transformer, handle_attr):
        delattr(transformer, handle_attr)


@dataclass
class DeltaCacheConfig:
    """How to run the delta cache.

    Args:
        schedule: a `Schedule`, a preset name or a path to a schedule JSON file.
        delta_dtype: dtype of the delta buffers; None keeps the activation dtype, `torch.float32` keeps
            them in full precision (more memory, slightly more faithful in bf16 runs).
        delta_device: where the delta buffers live; None keeps them beside the activations, "cpu" moves
            them to host memory (for 24 GB cards; costs one copy per run and step).
        num_inference_steps: the run's step count, for pipelines that do not pass it in their
            `cache_context` (HunyuanVideo, WanVACE); a count the context gives wins, and without either the
            schedule's grid is used.
    """

    schedule: Schedule | str
    delta_dtype: torch.dtype | None = None
    delta_device: str | torch.device | None = None
    num_inference_steps: int | None = None


class BranchState(BaseState):
    """Everything one branch (cond / uncond) remembers within one generation."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.num_calls = 0  # calls counted as steps (the same call again is not: generations.advance)
        self.refresh_now: dict[str, bool] = {}  # block list -> is the current call a refresh step
        self.run_inputs: dict[tuple[str, int], tuple] = {}  # inputs of a run's first block, until its last
        self.kept_outputs: dict[tuple[str, int], tuple] = {}  # output of a block the model adds to, until the next
        self.added_between: dict[tuple[str, int], tuple] = {}  # run -> what the model added inside it (refresh)
        self.deltas: dict[tuple[str, int], tuple] = {}  # (block list, first block of run) -> per-stream deltas
        self.step = 0  # the current call's step
        self.warmup_steps: dict[str, int] = {}  # block list -> its warm-up length in this run
        self.delta_steps: dict[tuple[str, int], int] = {}  # run -> the step its delta was recorded at
        self.previous: dict[tuple[str, int], tuple[int, tuple]] = {}  # run -> (step, deltas) one refresh earlier
        self.line_trusted: dict[tuple[str, int], bool] = {}  # run -> the line's last forecast beat holding
        self.last_call: CallInfo | None = None  # shape, timestep and fingerprint of this branch's last call
        self.counted_steps: int | None = None  # the step count calls were counted against (no step index given)
        self.token_group = None  # the ranks holding the other tokens under context parallelism (linear forecast)

    def delta_bytes(self) -> int:
        held = [*self.deltas.values(), *(deltas for _, deltas in self.previous.values())]
        return sum(t.numel() * t.element_size() for ds in held for t in ds if t is not None)


class DeltaCacheRootHook(ModelHook):
    _is_stateful = True

    def __init__(self, state_manager: StateManager, schedule: Schedule, config: DeltaCacheConfig,
                 stats: DeltaCacheStats, runs_per_list: dict[str, int]):
        super().__init__()
        self.state_manager = state_manager
        self.schedule = schedule
        self.config = config
        self.stats = stats
        self.runs_per_list = runs_per_list
        self._refresh_sets: dict[tuple[str, int], frozenset[int]] = {}
        self._warmups: dict[tuple[str, int], int] = {}  # (block list, run's step count) -> warm-up length
        self._unnamed = UnnamedBranches(DEFAULT_BRANCH)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        with default_branch(self.state_manager, self._unnamed, args, kwargs):
            self._start_call(module, args, kwargs)
            return self.fn_ref.original_forward(*args, **kwargs)

    @torch.compiler.disable  # per-step Python decisions; compiling the whole transformer must not guard on them
    def _start_call(self, module: torch.nn.Module, args, kwargs) -> None:
        refuse_diffusion_forcing(kwargs, "the delta cache does not run")
        context = self.state_manager.context
        state: BranchState = self.state_manager.get_state()
        num_steps = context.num_inference_steps or self.config.num_inference_steps or self.schedule.num_steps
        advance(state, CallInfo.of(args, kwargs, context.step_index), context.step_index, num_steps)
        step = state.step
        if self.schedule.forecast == "linear":  # (only its trust check needs the other ranks; read per call:
            state.token_group = token_split_group(module)  # context parallelism comes after the cache hooks)
        state.counted_steps = num_steps if context.step_index is None else None
        for list_name in self.runs_per_list:
            refresh_steps = self._refresh_steps(list_name, num_steps)  # (also fills in the warm-up length)
            refresh = step >= num_steps or step in refresh_steps
            state.warmup_steps[list_name] = self._warmups[(list_name, num_steps)]
            # Without a delta for every run (e.g. a pipeline that skipped steps) reuse is impossible: compute.
            has_all_deltas = sum(1 for key in state.deltas if key[0] == list_name) == self.runs_per_list[list_name]
            state.refresh_now[list_name] = refresh or not has_all_deltas
        self.stats.record_call(context.name)

    def _refresh_steps(self, list_name: str, num_steps: int) -> frozenset[int]:
        key = (list_name, num_steps)
        if key not in self._refresh_sets:
            block_list = self.schedule.block_lists[list_name]
            self._refresh_sets[key] = block_list.refresh_steps_for(num_steps, self.schedule.num_steps)
            self._warmups[key] = warmup_length(self._refresh_sets[key])
        return self._refresh_sets[key]

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # (the pipeline's end of a complete run) A pipeline that passes no step index has had its calls counted
        # against the step count the cache was given: a run of another length followed the wrong plan.
        for name, state in self.state_manager._state_cache.items():
            if state.counted_steps is not None and state.num_calls != state.counted_steps:
                warnings.warn(f"delta cache: branch '{name}' made {state.num_calls} transformer calls (each a step; a "
                              f"call repeated exactly is not counted), but the cache planned {state.counted_steps} "
                              f"steps (this pipeline does not say its step count): apply it with "
                              f"num_inference_steps={state.num_calls}", stacklevel=2)
        self.state_manager.reset()
        self._unnamed.reset()
        return module


def token_split_group(transformer: torch.nn.Module):
    """The process group diffusers' context parallelism splits `transformer`'s tokens over (every stream a
    block carries is split: Wan's video tokens, HunyuanVideo's video and text tokens), None when unsplit."""
    config = getattr(getattr(transformer, "_parallel_config", None), "context_parallel_config", None)
    if config is None or (config._world_size or 1) < 2:
        return None
    return config._flattened_mesh.get_group()


def _closer(forecast: tuple, actual: tuple, than: tuple, group=None) -> bool:
    """Whether `forecast` is closer to `actual` than `than` is (summed over the streams, and over the ranks of
    `group` that hold the other tokens: every rank then decides as one process would on the whole sequence)."""
    def distance(a: tuple) -> torch.Tensor:
        return sum(torch.linalg.vector_norm((x - y).float()) ** 2 for x, y in zip(a, actual) if x is not None)
    distances = torch.stack([distance(forecast), distance(than)])
    if group is not None:
        if torch.distributed.get_backend(group) == "nccl":  # (NCCL takes GPU tensors only: --cache_cpu deltas)
            distances = distances.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.all_reduce(distances, group=group)
    return bool(distances[0] < distances[1])


class DeltaCacheBlockHook(ModelHook):
    """Hook on one background block at position `block_index` of run [run_first, run_last]."""

    def __init__(self, state_manager: StateManager, list_name: str, block_index: int, run: tuple[int, int],
                 metadata: TransformerBlockMetadata, config: DeltaCacheConfig, stats: DeltaCacheStats,
                 forecast: str = "hold", added_after: frozenset[int] = frozenset()):
        super().__init__()
        self.forecast = forecast
        self.state_manager = state_manager
        self.list_name = list_name
        self.run_key = (list_name, run[0])
        self.is_run_first = block_index == run[0]
        self.is_run_last = block_index == run[1]
        # The model adds something to this block's output before the run's next block (keep the output), or
        # to the previous block's output before this one (measure the addition).
        self.model_adds_after = block_index in added_after and not self.is_run_last
        self.model_adds_before = block_index - 1 in added_after and not self.is_run_first
        self.metadata = metadata
        self.config = config
        self.stats = stats

    # Only the block's own computation is left for torch.compile to trace. The bookkeeping runs eagerly
    # (torch.compiler.disable), so per-block Python state (run position, branch, statistics) never becomes
    # a guard, and `compile_repeated_blocks` keeps one graph for every block instead of recompiling per block.
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self._is_refresh_step():
            output = self.fn_ref.original_forward(*args, **kwargs)
            self._record(args, kwargs, output)
            return output
        return self._reuse(args, kwargs)

    @torch.compiler.disable
    def _is_refresh_step(self) -> bool:
        return self.state_manager.get_state().refresh_now[self.list_name]

    @torch.compiler.disable
    def _record(self, args, kwargs, output) -> None:
        """On a refresh step: keep the run's input at its first block, store the run's delta at its last.

        What the model adds between two blocks of the run (measured as the next block's input less the kept
        output) is left out of the delta: on reuse steps the model adds it afresh after the passed-through block.
        """
        state: BranchState = self.state_manager.get_state()
        if self.is_run_first:
            state.run_inputs[self.run_key] = self._input_streams(args, kwargs)
            # (leftovers of a refresh step cut short, e.g. by an exception, must not reach this one)
            state.added_between.pop(self.run_key, None)
            state.kept_outputs.pop(self.run_key, None)
        if self.model_adds_before:
            added = tuple(None if x is None else self._difference(x, y) for x, y in
                          zip(self._input_streams(args, kwargs), state.kept_outputs.pop(self.run_key)))
            earlier = state.added_between.get(self.run_key)
            state.added_between[self.run_key] = added if earlier is None else tuple(
                None if a is None else a + b for a, b in zip(earlier, added))
        if self.model_adds_after:
            state.kept_outputs[self.run_key] = self._output_streams(output)
        if self.is_run_last:
            run_inputs = state.run_inputs.pop(self.run_key)
            added = state.added_between.pop(self.run_key, None)
            if added is not None:  # (in the delta's dtype: the sum takes the wider of the two)
                run_inputs = tuple(None if x is None else x + a for x, a in zip(run_inputs, added))
            deltas = tuple(
                None if x is None else self._make_delta(y, x) for x, y in zip(run_inputs, self._output_streams(output))
            )
            # (a step refreshed twice, e.g. by a sampler that calls the model twice a step, overwrites its delta)
            shift = self.run_key in state.deltas and state.delta_steps[self.run_key] != state.step
            if self.forecast == "linear" and shift:
                line = self._extrapolate(state, state.step, next(d.device for d in deltas if d is not None))
                if line is not None:  # the line's forecast for this step, checked against the computed deltas
                    state.line_trusted[self.run_key] = _closer(line, deltas, than=state.deltas[self.run_key],
                                                               group=state.token_group)
                state.previous[self.run_key] = (state.delta_steps[self.run_key], state.deltas[self.run_key])
            state.delta_steps[self.run_key] = state.step
            state.deltas[self.run_key] = deltas
            self.stats.record_delta_bytes(sum(s.delta_bytes() for s in self.state_manager._state_cache.values()))

    @torch.compiler.disable
    def _reuse(self, args, kwargs):
        """On a reuse step: the run's first block returns input + delta, the others pass their input on."""
        state: BranchState = self.state_manager.get_state()
        self.stats.record_skip(self.state_manager.context.name, self.list_name)
        streams = self._input_streams(args, kwargs)
        if self.is_run_first:
            device = next(x.device for x in streams if x is not None)
            streams = tuple(None if x is None else self._add_delta(x, d)
                            for x, d in zip(streams, self._forecast_deltas(state, device)))
        return self._pack(streams)

    def _forecast_deltas(self, state: BranchState, device: torch.device) -> tuple:
        """The run's deltas for this step: the last refresh's (hold), or with the linear forecast the line's
        (`_extrapolate`) while the line's forecast of the last refresh was closer than holding would have been;
        otherwise they hold (a closed loop can amplify a bad line: each refresh sees the error it caused)."""
        deltas = state.deltas[self.run_key]
        if self.forecast != "linear" or not state.line_trusted.get(self.run_key, True):
            return deltas
        line = self._extrapolate(state, state.step, device)
        return deltas if line is None else line

    def _extrapolate(self, state: BranchState, step: int, device: torch.device) -> tuple | None:
        """The run's deltas at `step` on the line (in step index) through the last two refreshes' deltas, or
        None without such a line. The line needs its earlier point at or after the last warm-up step: the
        warm-up's steps change fastest (that is why they are computed), and a line through two of them
        overshoots the first reuse step."""
        if self.run_key not in state.previous:
            return None
        earlier_step, earlier = state.previous[self.run_key]
        if earlier_step < state.warmup_steps[self.list_name] - 1:
            return None
        last_step, deltas = state.delta_steps[self.run_key], state.deltas[self.run_key]
        if last_step == earlier_step:
            return None
        slope = (step - last_step) / (last_step - earlier_step)
        # (on the activations' device: with delta_device="cpu" the buffers are there, and activation-sized
        # arithmetic on the CPU every reuse step would cost more than the copies)
        return tuple(None if d is None else _line(d.to(device, non_blocking=True), e.to(device, non_blocking=True),
                                                   slope) for d, e in zip(deltas, earlier))

    # ---- streams: (hidden_states, encoder_hidden_states or None) ---------------------------------------
    def _input_streams(self, args, kwargs) -> tuple:
        return block_streams.input_streams(self.metadata, args, kwargs)

    def _output_streams(self, output) -> tuple:
        return block_streams.output_streams(self.metadata, output)

    def _pack(self, streams: tuple):
        return block_streams.pack_output(self.metadata, streams)

    # ---- delta arithmetic --------------------------------------------------------------------------
    def _make_delta(self, output: torch.Tensor, run_input: torch.Tensor) -> torch.Tensor:
        delta = self._difference(output, run_input)
        if self.config.delta_device is not None:
            delta = delta.to(self.config.delta_device)
        return delta

    def _difference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x - y in the delta dtype, where the activations are; subtracted in the wider of the two dtypes, so a
        narrower delta dtype rounds the difference, never the activations."""
        dtype = self.config.delta_dtype or x.dtype
        if dtype == x.dtype == y.dtype:
            return x - y
        wide = torch.promote_types(torch.promote_types(x.dtype, y.dtype), dtype)
        return (x.to(wide) - y.to(wide)).to(dtype)

    @staticmethod
    def _add_delta(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        # (added in the wider of the two dtypes, then back to the activations')
        return (x + delta.to(x.device, non_blocking=True)).to(x.dtype)


def _line(last: torch.Tensor, earlier: torch.Tensor, slope: float) -> torch.Tensor:
    return last + (last - earlier) * slope


class DeltaCacheHandle:
    """What `apply_delta_cache` returns: statistics and removal."""

    def __init__(self, transformer: torch.nn.Module, schedule: Schedule, config: DeltaCacheConfig,
                 stats: DeltaCacheStats, state_manager: StateManager):
        self.transformer = transformer
        self.schedule = schedule
        self.config = config
        self._stats = stats
        self._state_manager = state_manager

    def stats(self) -> dict:
        """Counts since `apply_delta_cache` or `reset_stats()`, summed over branches, plus per-branch detail.

        Keys: computed_block_evals, total_block_evals, ideal_speedup (= total / computed),
        delta_memory_bytes (peak bytes held in delta buffers, all branches), branches.
        """
        return self._stats.as_dict()

    def reset_stats(self) -> None:
        self._stats.reset()

    def reset(self) -> None:
        """Forget every branch's deltas and step count: the next call starts a generation. Pipelines do this
        after each complete run, and the cache notices a new run by its step index, latent shape or a rising
        timestep (generations.py); call it after an interrupted run that none of these tells from its successor:
        in a pipeline without a step index (HunyuanVideo, VACE), one followed by a run that starts below the
        timestep it was cut at (a video-to-video run with a lower strength), or one whose calls carry no
        timestep."""
        self._state_manager.reset()

    def predicted_block_evals(self, num_steps: int, steps: range | None = None) -> tuple[int, int]:
        """(computed, total) block evaluations the schedule plans for one branch of a `num_steps`-step run; with
        `steps`, for a transformer that runs only those (one of Wan 2.2's experts: `steps` from
        `delta_cache.models.experts.expert_steps(pipe, num_steps)[name]`), which computes its first one."""
        if steps is not None:
            from .plan import block_evals_on_steps

            return block_evals_on_steps(self.schedule, self._stats.block_list_depths, num_steps, steps)
        return self.schedule.predicted_block_evals(self._stats.block_list_depths, num_steps)

    def remove(self) -> None:
        remove_delta_cache(self.transformer)


# Hook names of diffusers' caches, which also skip blocks: a second cache on the same blocks would make both
# wrong (diffusers' enable_cache() refuses only where another one set _cache_config, which ours does not).
_DIFFUSERS_CACHE_HOOKS = ("fbc_", "mag_cache_", "faster_cache_", "pyramid_attention_broadcast", "sea_cache_",
                          "taylorseer_cache")


def check_transformer(transformer, caller: str) -> None:
    """One clear line for what a cache cannot be applied to: not a transformer module (e.g. the pipeline), or
    a transformer that already carries a diffusers cache (enable_cache, or a function: apply_first_block_cache,
    ...)."""
    if not isinstance(transformer, torch.nn.Module):
        raise UserInputError(f"{caller} takes the pipeline's transformer (e.g. pipe.transformer), not a "
                             f"{type(transformer).__name__}")
    if getattr(transformer, "_cache_config", None) is not None:  # (enabled through enable_cache)
        raise UserInputError("this transformer already has a diffusers cache enabled; call disable_cache() first")
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in getattr(registry, "hooks", {}):
            if name.startswith(_DIFFUSERS_CACHE_HOOKS):
                raise UserInputError(f"this transformer already carries a diffusers cache (hook {name!r}); remove "
                                     "it first (disable_cache(), or the cache's remove function)")


def model_block_lists(transformer: torch.nn.Module) -> dict[str, int]:
    """Block lists of a transformer (direct `nn.ModuleList` children of registered block classes) -> depth."""
    block_streams.register_video_blocks()
    found = {}
    for name, child in transformer.named_children():
        if isinstance(child, torch.nn.ModuleList) and len(child) and type(child[0]) in TransformerBlockRegistry._registry:
            found[name] = len(child)
    return found


def additions_between_blocks(transformer: torch.nn.Module) -> dict[str, frozenset[int]]:
    """Block list -> indices of blocks after which the model adds something to the hidden states outside the
    blocks. diffusers' VACE transformers add a control hint after each block in `config.vace_layers`, computed
    afresh every call, also on reuse steps: a run's delta must leave it out, or the hint of the refresh step
    would be added on top of the current one."""
    vace_layers = getattr(getattr(transformer, "config", None), "vace_layers", None)
    return {"blocks": frozenset(vace_layers)} if vace_layers else {}


def apply_delta_cache(
    transformer: torch.nn.Module,
    schedule: "Schedule | str | DeltaCacheConfig",
    *,
    delta_dtype: torch.dtype | None = None,
    delta_device: str | torch.device | None = None,
    num_inference_steps: int | None = None,
) -> DeltaCacheHandle:
    """Attach the delta cache to `transformer` (a diffusers transformer, inside a pipeline or not)."""
    if isinstance(schedule, DeltaCacheConfig):
        config = schedule
    else:
        config = DeltaCacheConfig(schedule, delta_dtype=delta_dtype, delta_device=delta_device,
                                  num_inference_steps=num_inference_steps)
    resolved = load_schedule(config.schedule)
    check_transformer(transformer, "apply_delta_cache")
    if getattr(transformer, _HANDLE_ATTR, None) is not None:
        raise UserInputError("the delta cache is already applied to this transformer; remove_delta_cache() first")
    if getattr(transformer, "_teacache_handle", None) is not None:  # (teacache.py's handle attribute)
        raise UserInputError("TeaCache is applied to this transformer; remove_teacache() first")

    depths = model_block_lists(transformer)
    for list_name in resolved.block_lists:
        child = getattr(transformer, list_name, None)
        if isinstance(child, torch.nn.ModuleList):
            depths.setdefault(list_name, len(child))
    resolved.check_fits(depths)

    state_manager = StateManager(BranchState)
    stats = DeltaCacheStats(depths)
    runs_per_list = {name: len(block_list.runs()) for name, block_list in resolved.block_lists.items()}
    added_after = additions_between_blocks(transformer)
    cached_blocks = [  # all checks first, so a failure leaves the model untouched
        (list_name, index, run, getattr(transformer, list_name)[index])
        for list_name, block_list in resolved.block_lists.items()
        for run in block_list.runs()
        for index in range(run[0], run[1] + 1)
    ]
    for list_name, index, _, block in cached_blocks:
        if "group_offloading" in getattr(getattr(block, "_diffusers_hook", None), "hooks", {}):
            # Block-level offloading loads a group's weights when its first block runs; a reuse step skips that
            # block, so the group's other blocks would run offloaded. Applied after the cache, it wraps ours.
            raise UserInputError(f"group offloading is enabled on this transformer ({list_name}.{index} loads a "
                                 "group): apply the delta cache first, then enable_group_offload")
    metadata = [block_streams.block_metadata(block) for *_, block in cached_blocks]
    for (list_name, index, run, block), block_metadata in zip(cached_blocks, metadata):
        hook = DeltaCacheBlockHook(state_manager, list_name, index, run, block_metadata, config, stats,
                                   forecast=resolved.forecast, added_after=added_after.get(list_name, frozenset()))
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BLOCK_HOOK)

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(DeltaCacheRootHook(state_manager, resolved, config, stats, runs_per_list), _ROOT_HOOK)
    registry.invalidate_child_registries_cache()
    handle = DeltaCacheHandle(transformer, resolved, config, stats, state_manager)
    setattr(transformer, _HANDLE_ATTR, handle)
    return handle


def remove_delta_cache(transformer: torch.nn.Module) -> None:
    """Detach the delta cache; the transformer behaves exactly as before `apply_delta_cache`."""
    detach_hooks(transformer, _ROOT_HOOK, (_BLOCK_HOOK,), _HANDLE_ATTR)
