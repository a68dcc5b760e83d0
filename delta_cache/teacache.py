"""TeaCache (Liu et al., 2024), written here from its published description, as a baseline for the benchmark.

Per transformer call, a cheap timestep-aware tensor x computed before the blocks (the *indicator*) is
compared with the previous call's: d = mean|x - x_prev| / mean|x_prev|. A polynomial rescales d to an
estimate of how much the model's output changes, and the estimates accumulate. While the sum stays below
`threshold`, the whole block stack is skipped and the last computed call's stack residual (stack output -
stack input, image tokens) is added to the stack input instead; otherwise every block runs, the residual is
refreshed and the sum restarts at 0. The first `first_computed_steps` steps and the last step always run
(the last one but in TeaCache's Wan "ret_steps" mode: `last_step_computed`).

Indicators (which tensor x is; the family adapters say which one each model uses):
- "timestep_embedding": the time embedding (`condition_embedder` output 0; Wan2.1, TeaCache's default mode);
- "timestep_projection": the 6-way timestep projection (`condition_embedder` output 1; Wan2.1 "ret_steps");
- "modulated_input": the first block's `norm1(hidden_states, emb=temb)` image output (HunyuanVideo).

Hooks as in `hooks.py`: a root hook on the transformer (step counting), an optional hook on the module
that makes the indicator, and one hook on every block; they share one `StateManager`, so each
`cache_context` branch (cond / uncond) has its own indicator history, sum and residual.

`calibrate=True` computes every call and records (d of the indicator, relative L1 change of the model
output) pairs; `fit_coefficients` turns them into a polynomial for a model without published coefficients.
Unlike the delta cache, TeaCache decides from data: under context parallelism a "modulated_input" decision
would be taken from each GPU's own shard, so it is meant here for single-GPU comparisons.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from . import block_streams
from .errors import UserInputError
from .generations import CallInfo, UnnamedBranches, advance
from .hooks import _HANDLE_ATTR as DELTA_CACHE_HANDLE_ATTR
from .hooks import DEFAULT_BRANCH, check_transformer, default_branch, detach_hooks, model_block_lists

_ROOT_HOOK = "teacache_root"
_INDICATOR_HOOK = "teacache_indicator"
_BLOCK_HOOK = "teacache_block"
_HANDLE_ATTR = "_teacache_handle"
INDICATORS = ("timestep_embedding", "timestep_projection", "modulated_input")
_EMBEDDER_OUTPUT = {"timestep_embedding": 0, "timestep_projection": 1}


@dataclass(frozen=True)
class TeaCacheSettings:
    """What a model family publishes for TeaCache (`delta_cache/models/<family>/teacache.py`)."""

    coefficients: tuple[float, ...]  # highest power first
    thresholds: tuple[float, float] | None  # (slow, fast); None when unpublished
    indicator: str
    first_computed_steps: int
    last_step_computed: bool = True  # (TeaCache's Wan "ret_steps" mode leaves the last step to the indicator)


@dataclass
class TeaCacheConfig:
    """How to run TeaCache.

    Args:
        threshold: skip while the accumulated rescaled change stays below it (larger: faster, less faithful).
        coefficients: the rescaling polynomial, highest power first (`numpy.polyval` order).
        indicator: one of `INDICATORS`.
        num_inference_steps: the run's step count (the last step always runs); None: the pipeline's
            `cache_context` value.
        first_computed_steps: steps at the start that always run (1; TeaCache's Wan "ret_steps" mode: 5).
        last_step_computed: the last step always runs (False in TeaCache's Wan "ret_steps" mode, where the
            accumulated change decides it as any other).
        calibrate: compute every call and record (indicator change, output change) pairs.
    """

    threshold: float
    coefficients: Sequence[float]
    indicator: str
    num_inference_steps: int | None = None
    first_computed_steps: int = 1
    last_step_computed: bool = True
    calibrate: bool = False

    def __post_init__(self) -> None:
        if self.indicator not in INDICATORS:
            raise UserInputError(f"TeaCache indicator {self.indicator!r}: choose from {', '.join(INDICATORS)}")
        if not self.coefficients:
            raise UserInputError("TeaCache needs at least one polynomial coefficient")
        if self.first_computed_steps < 1:
            raise UserInputError(f"first_computed_steps must be >= 1, got {self.first_computed_steps}")


class _BranchState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.num_calls = 0
        self.step = 0
        self.last_call: CallInfo | None = None  # shape, timestep and fingerprint of this branch's last call
        self.num_steps: int | None = None  # this call's step count (the pipeline's, else the config's)
        self.indicator: torch.Tensor | None = None  # this call's
        self.previous_indicator: torch.Tensor | None = None
        self.accumulated = 0.0
        self.skip_now = False
        self.same_step = False  # this call repeats the last one (same timestep and latents): decide as it did
        self.stack_input: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.previous_output: torch.Tensor | None = None  # calibration: the last call's output
        self.pending_change: float | None = None  # calibration: this call's indicator change


@dataclass
class TeaCacheStats:
    computed_calls: int = 0
    skipped_calls: int = 0
    calibration_pairs: list[tuple[float, float]] = field(default_factory=list)  # (indicator d, output change)


def relative_l1(x: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|x - previous| / mean|previous|, in float32."""
    x, previous = x.float(), previous.float()
    return float((x - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))


class _TeaCacheRootHook(ModelHook):
    _is_stateful = True

    def __init__(self, state_manager: StateManager, config: TeaCacheConfig, stats: TeaCacheStats):
        super().__init__()
        self.state_manager = state_manager
        self.config = config
        self.stats = stats
        self._unnamed = UnnamedBranches(DEFAULT_BRANCH)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        with default_branch(self.state_manager, self._unnamed, args, kwargs):
            self._start_call(args, kwargs)
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.config.calibrate:
                self._record_output(output)
            return output

    @torch.compiler.disable
    def _start_call(self, args, kwargs) -> None:
        context = self.state_manager.context
        state: _BranchState = self.state_manager.get_state()
        num_steps = context.num_inference_steps or self.config.num_inference_steps
        same_step = advance(state, CallInfo.of(args, kwargs, context.step_index), context.step_index, num_steps)
        state.same_step = same_step and state.residual is not None  # (then the step's decision again)
        state.num_steps = num_steps
        state.indicator = None

    @torch.compiler.disable
    def _record_output(self, output) -> None:
        state: _BranchState = self.state_manager.get_state()
        sample = output.sample if hasattr(output, "sample") else output[0] if isinstance(output, (tuple, list)) else output
        if state.pending_change is not None and state.previous_output is not None:
            self.stats.calibration_pairs.append((state.pending_change, relative_l1(sample, state.previous_output)))
        state.previous_output, state.pending_change = sample.detach().clone(), None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self._unnamed.reset()
        return module


class _TeaCacheIndicatorHook(ModelHook):
    """On the module whose output holds the indicator (Wan's `condition_embedder`)."""

    def __init__(self, state_manager: StateManager, output_index: int):
        super().__init__()
        self.state_manager = state_manager
        self.output_index = output_index

    def post_forward(self, module: torch.nn.Module, output):
        self.state_manager.get_state().indicator = output[self.output_index]
        return output


class _TeaCacheBlockHook(ModelHook):
    """On every block; the first block of the stack decides, the last one stores the residual."""

    def __init__(self, state_manager: StateManager, config: TeaCacheConfig, stats: TeaCacheStats,
                 metadata, is_stack_first: bool, is_stack_last: bool):
        super().__init__()
        self.state_manager = state_manager
        self.config = config
        self.stats = stats
        self.metadata = metadata
        self.is_stack_first = is_stack_first
        self.is_stack_last = is_stack_last

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.is_stack_first:
            self._decide(module, args, kwargs)
        if self._skipping():
            return self._skip(args, kwargs)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_stack_last:
            self._store_residual(output)
        return output

    @torch.compiler.disable
    def _skipping(self) -> bool:
        return self.state_manager.get_state().skip_now

    @torch.compiler.disable
    def _decide(self, module, args, kwargs) -> None:
        state: _BranchState = self.state_manager.get_state()
        indicator = state.indicator
        if self.config.indicator == "modulated_input":
            indicator = _modulated_input(module, args, kwargs)
        if indicator is None:
            raise RuntimeError(f"TeaCache: no {self.config.indicator} indicator was seen before the first block")
        if state.num_steps is None:
            raise UserInputError("TeaCache needs num_inference_steps (this pipeline does not pass it)")
        hidden = block_streams.input_streams(self.metadata, args, kwargs)[0]
        if state.same_step and not self.config.calibrate:  # the step's decision again, nothing accumulated
            self.stats.computed_calls += not state.skip_now
            self.stats.skipped_calls += state.skip_now
            state.stack_input = None if state.skip_now else hidden
            return
        compute = (self.config.calibrate or state.residual is None or state.residual.shape != hidden.shape
                   or state.previous_indicator is None
                   or state.step < self.config.first_computed_steps
                   or state.step >= state.num_steps - (1 if self.config.last_step_computed else 0))
        if state.previous_indicator is not None and (self.config.calibrate or not compute):
            change = relative_l1(indicator, state.previous_indicator)
            if self.config.calibrate:
                state.pending_change = change  # paired with the output change when the call returns
            else:
                state.accumulated += float(np.polyval(self.config.coefficients, change))
                compute = state.accumulated >= self.config.threshold
        if compute:
            state.accumulated = 0.0
            self.stats.computed_calls += 1
        else:
            self.stats.skipped_calls += 1
        state.previous_indicator = indicator.detach()
        state.skip_now = not compute
        state.stack_input = hidden if compute else None  # the last block makes the residual from it

    @torch.compiler.disable
    def _store_residual(self, output) -> None:
        state: _BranchState = self.state_manager.get_state()
        state.residual = block_streams.output_streams(self.metadata, output)[0] - state.stack_input
        state.stack_input = None

    @torch.compiler.disable
    def _skip(self, args, kwargs):
        """The stack's first block returns input + residual (image tokens; text passes through), the others
        pass their input on."""
        hidden, encoder = block_streams.input_streams(self.metadata, args, kwargs)
        if self.is_stack_first:
            hidden = hidden + self.state_manager.get_state().residual
        return block_streams.pack_output(self.metadata, (hidden, encoder))


def _modulated_input(block: torch.nn.Module, args, kwargs) -> torch.Tensor:
    """HunyuanVideo's indicator: the first double block's modulated, normalised image input."""
    bound = inspect.signature(type(block).forward).bind(block, *args, **kwargs).arguments
    return block.norm1(bound["hidden_states"], emb=bound["temb"])[0]


def _takes_hidden_and_emb_only(forward) -> bool:
    """norm1(x, emb=temb) works: it takes `emb` and needs nothing else but x (HunyuanVideo's image-to-video
    blocks also need the token-replace embedding)."""
    parameters = [p for p in inspect.signature(forward).parameters.values() if p.name != "self"]
    required = [p.name for p in parameters[1:] if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return "emb" in [p.name for p in parameters] and set(required) <= {"emb"}


class TeaCacheHandle:
    def __init__(self, transformer: torch.nn.Module, config: TeaCacheConfig, stats: TeaCacheStats):
        self.transformer = transformer
        self.config = config
        self.stats = stats

    def reset_stats(self) -> None:
        """Zero the call counts (e.g. one summary per video); calibration pairs are kept."""
        self.stats.computed_calls = self.stats.skipped_calls = 0

    def remove(self) -> None:
        remove_teacache(self.transformer)


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig) -> TeaCacheHandle:
    """Attach TeaCache to a diffusers transformer (Wan2.1 or HunyuanVideo)."""
    check_transformer(transformer, "apply_teacache")
    if getattr(transformer, _HANDLE_ATTR, None) is not None:
        raise UserInputError("TeaCache is already applied to this transformer; remove_teacache() first")
    if getattr(transformer, DELTA_CACHE_HANDLE_ATTR, None) is not None:
        raise UserInputError("the delta cache is applied to this transformer; remove_delta_cache() first")
    lists = list(model_block_lists(transformer))  # forward order: the order the model declares them
    if not lists:
        raise UserInputError(f"{type(transformer).__name__} has no registered transformer block lists")
    blocks = [block for name in lists for block in getattr(transformer, name)]
    metadata = [block_streams.block_metadata(block) for block in blocks]
    embedder = None
    if config.indicator in _EMBEDDER_OUTPUT:
        embedder = getattr(transformer, "condition_embedder", None)
        if embedder is None:
            raise UserInputError(f"TeaCache indicator {config.indicator}: {type(transformer).__name__} has no "
                                 "condition_embedder (it is Wan2.1's)")
    elif getattr(blocks[0], "norm1", None) is None or not _takes_hidden_and_emb_only(blocks[0].norm1.forward):
        raise UserInputError(f"TeaCache indicator modulated_input: the first block of {type(transformer).__name__} "
                             "has no norm1(hidden_states, emb=temb) (HunyuanVideo text-to-video's)")

    state_manager = StateManager(_BranchState)
    stats = TeaCacheStats()
    for index, (block, block_metadata) in enumerate(zip(blocks, metadata)):
        hook = _TeaCacheBlockHook(state_manager, config, stats, block_metadata, is_stack_first=index == 0,
                                  is_stack_last=index == len(blocks) - 1)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BLOCK_HOOK)
    if embedder is not None:
        hook = _TeaCacheIndicatorHook(state_manager, _EMBEDDER_OUTPUT[config.indicator])
        HookRegistry.check_if_exists_or_initialize(embedder).register_hook(hook, _INDICATOR_HOOK)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_TeaCacheRootHook(state_manager, config, stats), _ROOT_HOOK)
    registry.invalidate_child_registries_cache()
    handle = TeaCacheHandle(transformer, config, stats)
    setattr(transformer, _HANDLE_ATTR, handle)
    return handle


def remove_teacache(transformer: torch.nn.Module) -> None:
    """Detach TeaCache; the transformer behaves exactly as before `apply_teacache`."""
    detach_hooks(transformer, _ROOT_HOOK, (_INDICATOR_HOOK, _BLOCK_HOOK), _HANDLE_ATTR)


def fit_coefficients(pairs: Sequence[tuple[float, float]], degree: int = 4) -> list[float]:
    """Least-squares polynomial (highest power first) from indicator changes to output changes, as TeaCache
    fits its coefficients; from `calibrate=True` runs."""
    pairs = [p for p in pairs if np.isfinite(p).all()]
    if len(pairs) <= degree:
        raise ValueError(f"need more than {degree} calibration pairs to fit a degree-{degree} polynomial, got {len(pairs)}")
    x, y = np.array(pairs, dtype=np.float64).T
    return [float(c) for c in np.polyfit(x, y, degree)]
