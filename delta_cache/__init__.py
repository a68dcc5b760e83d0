"""ProfilingDiT's delta cache: profiling-derived, per-block residual reuse for video diffusion transformers.

    import delta_cache
    schedule = delta_cache.load_schedule("wan2.1-t2v-14b")      # preset name or JSON path
    handle = delta_cache.apply_delta_cache(pipe.transformer, schedule)
    video = pipe(...)
    print(handle.stats())  # computed_block_evals, total_block_evals, ideal_speedup, per-branch detail
    delta_cache.remove_delta_cache(pipe.transformer)
"""

from .errors import CheckpointError, ScheduleError, UserInputError
from .hooks import (
    DeltaCacheConfig,
    DeltaCacheHandle,
    apply_delta_cache,
    model_block_lists,
    remove_delta_cache,
)
from .schedule import BlockListSchedule, Schedule, list_presets, load_schedule

__all__ = [
    "BlockListSchedule",
    "CheckpointError",
    "DeltaCacheConfig",
    "DeltaCacheHandle",
    "Schedule",
    "ScheduleError",
    "UserInputError",
    "apply_delta_cache",
    "list_presets",
    "load_schedule",
    "model_block_lists",
    "remove_delta_cache",
]
