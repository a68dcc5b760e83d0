"""Wan2.1 family adapter.

- `tasks`: upstream generate.py facts (tasks, sizes, defaults, prompts, output names)
- `checkpoint`: `load_wan_components` for the upstream and diffusers layouts (`keys`: key renames)
- `pipeline`: diffusers pipelines with upstream's sampler grids, timed generation
- `tiny`: `write_tiny_checkpoint`, random-weight tiny checkpoints for tests and demos

Submodules are imported directly (this package imports nothing, so `--help` stays fast).
"""
