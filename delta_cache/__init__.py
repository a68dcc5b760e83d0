"""ProfilingDiT's delta cache: profiling-derived, per-block residual reuse for video diffusion transformers.

    import delta_cache
    schedule = delta_cache.load_schedule("wan2.1-t2v-14b")      # preset name or JSON path
    handle = delta_cache.apply_delta_cache(pipe.transformer, schedule)
    video = pipe(...)
    print(handle.stats())  # computed_block_evals, total_block_evals, ideal_speedup, per-branch detail
    delta_cache.remove_delta_cache(pipe.transformer)
"""

from .errors import CheckpointError, ScheduleError, UserInputError

# The rest imports diffusers (seconds): load it on first use so `--help` and flag errors stay instant.
_LAZY = {
    "DeltaCacheConfig": ".hooks",
    "DeltaCacheHandle": ".hooks",
    "apply_delta_cache": ".hooks",
    "model_block_lists": ".hooks",
    "remove_delta_cache": ".hooks",
    "BlockListSchedule": ".schedule",
    "Schedule": ".schedule",
    "list_presets": ".schedule",
    "load_schedule": ".schedule",
    "profile_pipeline": ".profiling.pipelines",
    "profile_experts": ".profiling.pipelines",
}

__all__ = ["CheckpointError", "ScheduleError", "UserInputError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'delta_cache' has no attribute {name!r}")
