"""HunyuanVideo family adapter (Tencent, 13B text-to-video).

- `config`: upstream sample_video.py facts (flags, templates, negative prompt, sizes, output names)
- `checkpoint`: `load_hunyuan_video_components` for the upstream `ckpts/` layout or a diffusers folder
- `keys`: width/depth-agnostic transformer key conversion (and its inverse), fp8 dequantisation
- `pipeline`: diffusers' HunyuanVideoPipeline with upstream's sampler grid, timed generation
- `tiny`: `write_tiny_checkpoint`, random-weight tiny checkpoints for tests and demos
- `context_parallel`: multi-GPU (Ulysses) sampling: the cp_plan diffusers lacks and a per-rank text mask

Submodules are imported directly (this package imports nothing, so `--help` stays fast).
"""
