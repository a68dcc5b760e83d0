"""Wan2.1 sampled as `Wan2.1/generate.py` samples it (see delta_cache/models/runner.py)."""

from __future__ import annotations

import torch

from ..runner import ModelRunner, place
from . import tasks
from .checkpoint import load_wan_components
from .pipeline import build_pipeline, decode, denoise, encode, token_grid


def load_wan_runner(ckpt_dir, *, width: int, height: int, num_frames: int, num_steps: int, device: torch.device,
                    offload: bool = False, progress: bool = False, task: str = tasks.DEFAULT_TASK,
                    shift: float | None = None, guide_scale: float | None = None, solver: str = "unipc",
                    image=None, last_image=None, vace=None) -> ModelRunner:
    """`task` with CFG and upstream's negative prompt; bf16 on a GPU, fp32 on the CPU (as generate.py).
    None: generate.py's default (shift: the task's; guide scale 5). i2v and flf2v condition every prompt on
    `image` (and `last_image`), PIL images as `inputs.read_input_frames` gives them; width and height are
    then the output size (`tasks.i2v_output_size`). VACE conditions every prompt on `vace`
    (`inputs.VaceInputs`, whose size and frame count are the run's)."""
    from ...video import to_uint8_as_upstream

    if shift is None:
        shift = tasks.task_defaults(task, f"{width}*{height}").sample_shift
    guide_scale = 5.0 if guide_scale is None else guide_scale
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if tasks.is_image_to_video(task) and image is None:
        raise ValueError(f"{task} needs an image")
    if tasks.is_vace(task) and vace is None:
        raise ValueError(f"{task} needs its conditions (inputs.VaceInputs)")
    components = load_wan_components(ckpt_dir, task=task, dtype=dtype)
    pipe = build_pipeline(components, image_to_video=image is not None, solver=solver, shift=shift)
    place(pipe, device, offload, progress)

    def generate(prompt: str, seed: int, start=None):
        return denoise(pipe, prompt=prompt, negative_prompt=tasks.negative_prompt(task), width=width, height=height,
                       num_frames=num_frames, num_inference_steps=num_steps, guidance_scale=guide_scale, seed=seed,
                       image=image, last_image=last_image, vace=vace, start=start)

    grid = token_grid(pipe, width=width, height=height, num_frames=num_frames)
    # VACE denoises one latent frame per reference image in front of the video's
    reference_frames = len(vace.reference_images) if vace is not None else 0

    return ModelRunner(
        pipe=pipe, transformer=components.transformer, block_lists=["blocks"],
        token_grid=grid, leading_tokens=reference_frames * grid[1] * grid[2],
        patch=tuple(components.transformer.config.patch_size[1:]), width=width, height=height,
        num_frames=num_frames, num_steps=num_steps, fps=tasks.SAMPLE_FPS, generate=generate,
        decode=lambda latents: decode(pipe, latents)[0], to_uint8=to_uint8_as_upstream,
        encode=lambda frames: encode(pipe, frames), model_name=f"Wan2.1 {task}",
        settings={"task": task, "sample_solver": solver, "sample_shift": shift, "sample_guide_scale": guide_scale,
                  "device": str(device), "dtype": str(dtype).replace("torch.", "")},
        # WanVACEPipeline's cache contexts carry no step count
        cache_num_steps=num_steps if vace is not None else None)
