"""TeaCache's published settings for HunyuanVideo (facts from its release, for `delta_cache.teacache`)."""

from __future__ import annotations

from ...teacache import TeaCacheSettings

# The first double block's modulated image input; (slow, fast) thresholds: about 1.6x and 2.1x on the real model.
_SETTINGS = TeaCacheSettings(
    coefficients=(7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00, 9.61237896e-02),
    thresholds=(0.10, 0.15), indicator="modulated_input", first_computed_steps=1)


def teacache_settings() -> TeaCacheSettings:
    return _SETTINGS
