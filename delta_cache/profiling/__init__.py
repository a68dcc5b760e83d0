"""Profiling: let the model reveal what to cache (method.md section 4).

- `probe`: hooks that record, per step and block, high-attention tokens (sampled queries) and residual sketches
- `masks`: foreground masks on the token grid (motion, PCA clustering, pixel/user masks)
- `profile`: per-prompt profiles, their average, predicted reuse error of any schedule
- `derive`: schedules from a profile (tau, Eq. 15 refresh steps, target speedup)
- `report`: figures and a markdown summary
- `runner`: profile a model over prompts, resumable

The command line is `scripts/profile_model.py`; the workflow is documented in docs/profiling.md.
"""
