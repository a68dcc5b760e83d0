"""When does a transformer call start another generation? Shared by the caches' root hooks.

A cache's per-branch state belongs to one generation. Pipelines reset it after a complete run; an interrupted
run (an exception, Ctrl-C) leaves it behind, and the next run must not inherit its deltas or step count. A
call starts a new generation when the latents change shape, when the pipeline's step index starts again or
goes back, or, for pipelines that pass no step index (HunyuanVideo, Wan i2v and VACE), when the timestep rises
(a denoising run's timesteps fall from call to call; a second-order sampler repeats one, on other latents, but
never its first, so the first call's timestep again on other latents starts a run too), or, where no timestep
can be read, when the branch has counted a whole run. The same call again (same timestep and latents,
`repeats_last_call`) is the same step again: a rerun's first call after a run cut short after its first step,
or a pipeline calling twice with identical inputs (an empty prompt and negative prompt without cache
contexts).

Calls a pipeline makes outside any `cache_context` are named here too (`UnnamedBranches`): some pipelines
(HunyuanVideo image-to-video and its SkyReels variant, Wan video-to-video) call the transformer for the prompt
and then for the negative prompt without naming either, and the two must not share a branch's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserInputError


@dataclass(frozen=True)
class CallInfo:
    """What a transformer call says about where it is: its latents' shape, its (largest) timestep and a
    fingerprint of its latents (their sum and sum of squares)."""

    latent_shape: tuple | None
    timestep: float | None
    fingerprint: tuple[float, float] | None = None

    @classmethod
    def of(cls, args, kwargs, step_index: int | None) -> "CallInfo":
        """From a diffusers video transformer's arguments: `hidden_states` (first) and the `timestep` keyword
        (as diffusers' pipelines pass it; a positional second argument is not guessed at). The timestep and the
        fingerprint are only read where the pipeline passes no `step_index` (reading them costs a host sync on a
        GPU)."""
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else None
        if step_index is not None:
            return cls(shape, None)
        timestep = kwargs.get("timestep")
        if shape is None or not hidden_states.numel():
            return cls(shape, call_timestep(kwargs))
        latents = hidden_states.detach().float()
        sums = [latents.sum(), latents.square().sum()]
        if isinstance(timestep, torch.Tensor) and timestep.numel():  # (read in the same host sync as the sums)
            *sums, largest = torch.stack([*sums, timestep.detach().float().max().to(latents.device)]).tolist()
            return cls(shape, largest, tuple(sums))
        return cls(shape, call_timestep(kwargs), tuple(torch.stack(sums).tolist()))


def call_timestep(kwargs) -> float | None:
    """The (largest) `timestep` keyword of a transformer call, as a number (None where there is none)."""
    timestep = kwargs.get("timestep")
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().float().max()) if timestep.numel() else None
    return timestep if isinstance(timestep, (int, float)) else None


def repeats_last_call(previous: CallInfo | None, call: CallInfo) -> bool:
    """Whether `call` is the branch's last call again (same timestep and latents; only known where the pipeline
    passes no step index): the same step again, not the next one."""
    return (previous is not None and call.fingerprint is not None and call.timestep is not None
            and call.timestep == previous.timestep and call.fingerprint == previous.fingerprint)


def starts_new_generation(previous: CallInfo | None, num_calls: int, last_step: int, call: CallInfo,
                          step_index: int | None, num_steps: int | None) -> bool:
    """Whether `call` starts another generation in a branch that has made `num_calls` calls, the last at
    `last_step` described by `previous`."""
    if not num_calls or previous is None:
        return False
    if call.latent_shape != previous.latent_shape:
        return True
    if step_index is not None:
        return step_index == 0 or step_index < last_step
    if call.timestep is not None and previous.timestep is not None:
        # A rising timestep starts a run. A falling one continues it, also past the step count the cache was
        # given (a longer run than configured: those calls are computed, not taken for a second run); an equal
        # one is a second-order sampler's second call of a step (on other latents), or the same call again
        # (`repeats_last_call`). diffusers' second-order samplers (Heun, KDPM2) call their first timestep once,
        # so the first call's timestep again on other latents is another run's first call (after a run cut short
        # between its first two steps).
        if call.timestep == previous.timestep and num_calls == 1:
            return not repeats_last_call(previous, call)
        return call.timestep > previous.timestep
    return bool(num_steps) and num_calls >= num_steps


def advance(state, call: CallInfo, step_index: int | None, num_steps: int | None) -> bool:
    """Move a cache's branch state to `call`: reset it when the call starts another generation; then the call's
    step is the pipeline's step index, or, where there is none, the last step again for the same call again and
    else the next counted one. `state` holds `num_calls` (the calls counted as steps), `step`, `last_call` and
    `reset()`. Returns whether the call is the last step again (then not counted)."""
    if starts_new_generation(state.last_call, state.num_calls, state.step, call, step_index, num_steps):
        state.reset()  # (an interrupted run skipped the pipeline's end-of-run reset)
    same_step = step_index is None and repeats_last_call(state.last_call, call)
    state.last_call = call
    if not same_step:
        state.step = step_index if step_index is not None else state.num_calls
        state.num_calls += 1
    return same_step


def refuse_diffusion_forcing(kwargs, refusal: str) -> None:
    """One line for a call with SkyReels-V2's diffusion forcing (frames at different noise levels in one call, a
    window of steps moving along the video), which no step of a schedule or a profile describes."""
    if kwargs.get("enable_diffusion_forcing"):
        raise UserInputError(f"{refusal} diffusion forcing (frames at different noise levels in one call, steps of "
                             f"a window that moves along the video); use SkyReels-V2's text- or image-to-video "
                             f"pipeline")


class UnnamedBranches:
    """Branch names for calls made outside any `cache_context`: the first call at a timestep is `base`; further
    calls at the same timestep on the same latents with another text (`encoder_hidden_states`) are the step's
    other branches (a prompt's and a negative prompt's calls in a pipeline that does not name them) and get
    `base_2`, `base_3`, ... A call with the text of one of them is that branch again (a repeated call, or the
    first calls of a rerun after a run cut short at its first step). A second-order sampler's second call at a
    timestep (other latents) starts the naming again at `base`."""

    def __init__(self, base: str):
        self.base = base
        self.reset()

    def reset(self) -> None:
        # (the timestep and latents of the current step's calls, and each branch's text; tensors kept until reset)
        self._timestep: float | None = None
        self._latents = None
        self._texts: list = []

    @torch.compiler.disable  # (per-call Python decisions: a compiled transformer must not guard on them)
    def name(self, args, kwargs) -> str:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states")
        timestep = call_timestep(kwargs)
        kept = text.detach() if isinstance(text, torch.Tensor) else None
        same_step = (bool(self._texts) and timestep is not None and timestep == self._timestep
                     and _equal(hidden, self._latents))
        if not same_step:
            self._timestep = timestep
            self._latents = hidden.detach() if isinstance(hidden, torch.Tensor) else None
            self._texts = [kept]
            return self.base
        index = next((i for i, earlier in enumerate(self._texts) if _equal(text, earlier) is not False), None)
        if index is None:
            self._texts.append(kept)
            index = len(self._texts) - 1
        return self.base if index == 0 else f"{self.base}_{index + 1}"


def _equal(a, b) -> bool | None:
    """Whether two tensors hold the same values (None unless both are tensors)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return None
    return a.shape == b.shape and (a.data_ptr() == b.data_ptr() or torch.equal(a, b))
