"""TeaCache's published settings for Wan2.1 (facts from its release, for `delta_cache.teacache`).

Coefficients are degree-4 polynomials, highest power first, fitted by TeaCache's authors on the real
checkpoints; a model of another size or a fine-tune needs its own (`teacache.fit_coefficients`).
"""

from __future__ import annotations

from ...errors import UserInputError
from ...teacache import TeaCacheSettings

# indicator "timestep_embedding" is TeaCache's default mode, "timestep_projection" its "ret_steps" mode.
_COEFFICIENTS = {
    ("t2v-1.3B", "timestep_embedding"): (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01),
    ("t2v-1.3B", "timestep_projection"): (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
    ("t2v-14B", "timestep_embedding"): (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    ("t2v-14B", "timestep_projection"): (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
    ("i2v-14B-480P", "timestep_embedding"): (-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01),
    ("i2v-14B-480P", "timestep_projection"): (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    ("i2v-14B-720P", "timestep_embedding"): (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
    ("i2v-14B-720P", "timestep_projection"): (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
}
# (slow, fast) thresholds: about 1.6x and 2.1x on the real models. The i2v ret_steps ones were not published.
_THRESHOLDS = {
    ("t2v-1.3B", "timestep_embedding"): (0.05, 0.08), ("t2v-1.3B", "timestep_projection"): (0.05, 0.10),
    ("t2v-14B", "timestep_embedding"): (0.14, 0.20), ("t2v-14B", "timestep_projection"): (0.10, 0.20),
    ("i2v-14B-480P", "timestep_embedding"): (0.13, 0.26), ("i2v-14B-720P", "timestep_embedding"): (0.20, 0.30),
}
FIRST_COMPUTED_STEPS = {"timestep_embedding": 1, "timestep_projection": 5}


def teacache_settings(task: str, width: int, height: int, indicator: str = "timestep_embedding") -> TeaCacheSettings:
    """The published settings for an upstream `--task` (picked by task, not by folder name); i2v by
    resolution (720P when both sides are at least 720)."""
    key = f"i2v-14B-{'720P' if min(width, height) >= 720 else '480P'}" if task == "i2v-14B" else task
    if (key, indicator) not in _COEFFICIENTS:
        known = sorted({k for k, _ in _COEFFICIENTS})
        raise UserInputError(f"TeaCache published no Wan2.1 coefficients for {key} ({indicator}); it has {', '.join(known)}")
    # (the "ret_steps" mode, the timestep projection, runs its first 5 steps and leaves the last to the indicator)
    return TeaCacheSettings(_COEFFICIENTS[key, indicator], _THRESHOLDS.get((key, indicator)), indicator,
                            FIRST_COMPUTED_STEPS[indicator], last_step_computed=indicator != "timestep_projection")
