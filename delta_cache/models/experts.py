"""Pipelines with two transformers, Wan 2.2's experts: `transformer` denoises the high-noise steps and
`transformer_2` the low-noise ones; which steps each runs, read off the pipeline's scheduler before a run."""

from __future__ import annotations

import copy
import inspect

EXPERTS = ("transformer", "transformer_2")


def expert_steps(pipe, num_steps: int) -> dict[str, range] | None:
    """The steps each expert runs in a run of `num_steps`, by WanPipeline's rule (`transformer` while the timestep
    is at least boundary_ratio x the scheduler's training timesteps, `transformer_2` after); None for a pipeline
    without two transformers and a boundary."""
    if getattr(pipe, "transformer_2", None) is None or getattr(pipe, "transformer", None) is None:
        return None
    ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
    scheduler = getattr(pipe, "scheduler", None)
    if ratio is None or scheduler is None:
        return None
    scheduler = copy.deepcopy(scheduler)  # (setting its timesteps must not touch the pipeline's)
    scheduler.set_timesteps(num_steps)
    boundary = ratio * scheduler.config.num_train_timesteps
    high = int((scheduler.timesteps >= boundary).sum())  # (timesteps fall: the high-noise steps come first)
    return {"transformer": range(0, high), "transformer_2": range(high, num_steps)}


def default_steps(pipe) -> int | None:
    """The pipeline's default num_inference_steps (its __call__'s), or None."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get("num_inference_steps")
    return parameter.default if parameter is not None and isinstance(parameter.default, int) else None
