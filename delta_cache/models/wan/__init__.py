"""Wan2.1 family adapter.

- `tasks`: upstream generate.py facts (tasks, sizes, defaults, prompts, output names)
- `checkpoint`: `load_wan_components` for the upstream and diffusers layouts (`keys`: key renames)
- `pipeline`: diffusers pipelines with upstream's sampler grids, timed generation
- `inputs`: the inputs beyond the prompt (i2v/flf2v images, VACE source video, mask, reference images)
- `context_parallel`: the multi-GPU plan diffusers lacks for the VACE transformer
- `prompt_extend`: `--use_prompt_extend` with a local LLM folder
- `tiny`: `write_tiny_checkpoint`, random-weight tiny checkpoints for tests and demos

Submodules are imported directly (this package imports nothing, so `--help` stays fast).
"""
