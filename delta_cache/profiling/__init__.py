"""Profiling: let the model reveal what to cache (method.md section 4).

- `probe`: hooks that record, per step and block, high-attention tokens (sampled queries) and residual sketches
- `masks`: foreground masks on the token grid (motion, PCA clustering, pixel/user masks)
- `profile`: per-prompt profiles, their average, predicted reuse error of any schedule
- `derive`: schedules from a profile (tau, Eq. 15 refresh steps, target speedup)
- `report`: figures and a markdown summary
- `runner`: profile a model over prompts, resumable

The command line is `scripts/profile_model.py`; the workflow is documented in docs/profiling.md.
"""

# The Python API's entry points (`delta_cache.profile_pipeline` is the first), loaded on first use: importing
# the package must stay light for the scripts that only need one module.
_LAZY = {"derive_for_target": ".derive", "derive_schedule": ".derive", "DerivationParams": ".derive",
         "write_report": ".report", "profile_pipeline": ".pipelines", "profile_experts": ".pipelines",
         "Profile": ".profile"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'delta_cache.profiling' has no attribute {name!r}")
