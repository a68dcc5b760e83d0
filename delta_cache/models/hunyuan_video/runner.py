"""HunyuanVideo sampled as `HunyuanVideo/sample_video.py` samples it (see delta_cache/models/runner.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...video import to_uint8_as_upstream
from ..runner import ModelRunner, place
from . import config
from .checkpoint import find_diffusers_folder, load_hunyuan_video_components
from .pipeline import build_pipeline, decode, default_text_encoding, denoise, encode, token_grid


def transformer_paths(ckpt_dir, dit_weight=None) -> tuple[Path, Path, Path | None]:
    """(transformer weights, model base, diffusers folder or None) of `ckpt_dir` (upstream's ckpts/ layout or a
    diffusers folder) and `dit_weight` (default: the model base's standard transformer file)."""
    if dit_weight is None:
        dit_weight = Path(ckpt_dir) / Path(config.DEFAULT_DIT_WEIGHT).relative_to("ckpts")
    diffusers_folder = find_diffusers_folder(dit_weight, ckpt_dir)
    if diffusers_folder is not None:
        return diffusers_folder, diffusers_folder, diffusers_folder
    return config.dit_weight_file(dit_weight, "module"), Path(ckpt_dir), None


def load_hunyuan_video_runner(ckpt_dir, *, width: int, height: int, num_frames: int, num_steps: int,
                              device: torch.device, offload: bool = False, progress: bool = False,
                              dit_weight=None, shift: float | None = None,
                              guide_scale: float | None = None) -> ModelRunner:
    """Embedded guidance, no true CFG (upstream's defaults). `ckpt_dir` is the model base (upstream ckpts/
    layout) or a diffusers folder; `dit_weight` defaults to the model base's standard transformer file.

    Precision as sample_video.py: on a GPU a bf16 transformer, fp16 VAE and text encoders, autocast; on the
    CPU fp32 throughout. `shift` / `guide_scale` None: sample_video.py's --flow-shift 7 and
    --embedded-cfg-scale 6.
    """
    shift = config.FLOW_SHIFT if shift is None else shift
    guide_scale = config.EMBEDDED_GUIDANCE_SCALE if guide_scale is None else guide_scale
    dit_weight, model_base, _ = transformer_paths(ckpt_dir, dit_weight)
    cuda = device.type == "cuda"
    half, bf16 = (torch.float16, torch.bfloat16) if cuda else (torch.float32, torch.float32)
    dtypes = dict(dtype=bf16, vae_dtype=half, text_encoder_dtype=half, text_encoder_2_dtype=half)
    components = load_hunyuan_video_components(dit_weight, model_base, **dtypes)
    components.transformer.rope.theta = 256.0  # --rope-theta default; not stored in the checkpoint
    pipe = build_pipeline(components, shift=shift)
    place(pipe, device, offload, progress)
    height, width = config.align_to(height), config.align_to(width)
    text = default_text_encoding(num_frames)

    def generate(prompt: str, seed: int, start=None):
        return denoise(pipe, prompt=prompt, negative_prompt=None, height=height, width=width, num_frames=num_frames,
                       num_inference_steps=num_steps, embedded_guidance_scale=guide_scale, cfg_scale=1.0, seed=seed,
                       text=text, autocast_dtype=torch.bfloat16 if cuda else None, start=start)

    return ModelRunner(
        pipe=pipe, transformer=components.transformer,
        block_lists=["transformer_blocks", "single_transformer_blocks"],
        token_grid=token_grid(pipe, width=width, height=height, num_frames=num_frames),
        patch=(components.transformer.config.patch_size,) * 2, width=width, height=height, num_frames=num_frames,
        num_steps=num_steps, fps=config.SAMPLE_FPS, generate=generate,
        decode=lambda latents: decode(pipe, latents, autocast_dtype=torch.float16 if cuda else None)[0],
        to_uint8=to_uint8_as_upstream, encode=lambda frames: encode(pipe, frames), model_name="HunyuanVideo",
        cache_num_steps=num_steps, video_quality=config.VIDEO_QUALITY,
        settings={"sample_solver": "euler", "sample_shift": shift, "sample_guide_scale": guide_scale,  # embedded
                  "device": str(device), "dtype": str(bf16).replace("torch.", "")})
