"""Denoising that starts part-way: a known clean latent noised to a level sigma, then the front end's own
sampler over the rest of its grid (as in SDEdit).

A diagnostic for the tiny trained models (`scripts/check_quality.py --start_sigma`): a model that cannot
draw its prompts from pure noise may still finish a video that is already half there; at which noise level
it stops getting there tells which part of the denoising it has not learned yet (layout at high sigma,
shape and colour detail at low sigma). The sampler's grid and solver are the family's; only the steps
above the start level are dropped. A multistep solver restarts at first order there (it has no earlier
model outputs), and diffusers' DPM++ also drops to first order on its second-to-last step when fewer than
15 steps are left, so a run from S is close to, not equal to, the tail of a full run. Not meant to be
combined with a feature cache: its schedule counts the front end's full number of steps.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


class StartBelowGrid(ValueError):
    """The start level is below the sampler grid's last step: there is nothing left to denoise."""


@contextlib.contextmanager
def start_at_sigma(scheduler, sigma: float, **set_timesteps_kwargs) -> Iterator[float]:
    """Yield the first noise level <= `sigma` on the grid that `scheduler.set_timesteps(**set_timesteps_kwargs)`
    makes (pass what the pipeline will pass); within the block the scheduler's `set_timesteps` keeps only the
    steps from that level on, so a pipeline called there runs just those.
    """
    if not 0.0 < sigma < 1.0:
        raise ValueError(f"start sigma must be in (0, 1), got {sigma}")
    scheduler.set_timesteps(**set_timesteps_kwargs)
    grid = scheduler.sigmas[:-1]  # the last entry is the final 0, not a step
    below = torch.nonzero(grid <= sigma).flatten()
    if len(below) == 0:
        raise StartBelowGrid(f"start sigma {sigma} is below the grid's last step ({float(grid[-1]):.4f})")
    first = int(below[0])
    original = scheduler.set_timesteps

    @functools.wraps(original)  # pipelines inspect its signature (e.g. whether it takes `sigmas`)
    def truncated(*args, **kwargs):
        original(*args, **kwargs)
        scheduler.timesteps = scheduler.timesteps[first:]
        scheduler.sigmas = scheduler.sigmas[first:]
        scheduler.num_inference_steps = len(scheduler.timesteps)

    shadowed = scheduler.__dict__.get("set_timesteps")  # an instance attribute already there (nested use)
    scheduler.set_timesteps = truncated
    try:
        yield float(grid[first])
    finally:
        if shadowed is None:
            del scheduler.set_timesteps  # the class's method again
        else:
            scheduler.set_timesteps = shadowed


@contextlib.contextmanager
def initial_latents(scheduler, start: tuple[torch.Tensor, float] | None, seed: int,
                    **set_timesteps_kwargs) -> Iterator[dict]:
    """The pipeline's `latents=` keyword for `start` = (clean latents, sigma): those latents noised with the
    seed's noise to the grid's first level <= sigma, while `start_at_sigma` holds. For `start` None an empty
    dict and an untouched scheduler: the pipeline draws its own noise and runs every step."""
    if start is None:
        yield {}
        return
    clean, sigma = start
    with start_at_sigma(scheduler, sigma, **set_timesteps_kwargs) as start_sigma:
        yield {"latents": noised(clean, start_sigma, seed)}


def noised(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """(1 - sigma) * clean + sigma * noise, with the noise the pipeline itself would draw for `seed` (a CPU
    generator, float32): towards sigma = 1 the start becomes that seed's ordinary initial noise."""
    noise = torch.randn(clean.shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    return (1.0 - sigma) * clean.float().cpu() + sigma * noise
