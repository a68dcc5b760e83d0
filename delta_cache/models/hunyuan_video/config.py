"""Facts about HunyuanVideo's upstream `sample_video.py` that users rely on: flag choices, defaults, prompt
templates, the default negative prompt, size alignment, seeds, output naming.

Kept as data (and tiny pure functions) so the front end stays a thin argument parser. Nothing here imports
torch or diffusers: `--help` and flag errors must stay instant.
"""

from __future__ import annotations

import os
import random
import re
from datetime import datetime
from pathlib import Path

from ...errors import UserInputError

# --- flag choices (upstream names) -------------------------------------------------------------------
MODELS = ("HYVideo-T/2", "HYVideo-T/2-cfgdistill")
GUIDANCE_EMBEDDED = {"HYVideo-T/2": False, "HYVideo-T/2-cfgdistill": True}  # cfgdistill = the released weights
PRECISIONS = ("fp32", "fp16", "bf16")
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # -> torch dtype names
VAES = ("884-16c-hy",)  # <time><height><width stride>-<latent channels>c-<name>
TEXT_ENCODERS = ("clipL", "llm")  # upstream's names; the first encoder is "llm", the second "clipL"
MODEL_RESOLUTIONS = ("540p", "720p")  # accepted, unused (as upstream)

# --- sample_video.py defaults that other code reuses (the tiny-model trainer, delta_cache.models.runner) -------
FLOW_SHIFT = 7.0  # --flow-shift
EMBEDDED_GUIDANCE_SCALE = 6.0  # --embedded-cfg-scale
IMAGE_TEMPLATE, VIDEO_TEMPLATE = "dit-llm-encode", "dit-llm-encode-video"  # --prompt-template(-video)
SEED_TYPES = ("file", "random", "fixed", "auto")  # accepted, unused (as upstream)

DEFAULT_DIT_WEIGHT = "ckpts/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt"
DEFAULT_PRESET = "hunyuanvideo-720p"

# VAE and text encoders are found through this environment variable, not through --model-base.
MODEL_BASE_ENV = "MODEL_BASE"
DEFAULT_MODEL_BASE = "./ckpts"

SIZE_ALIGNMENT = 16  # height and width are rounded UP to a multiple of this
VAE_TEMPORAL_STRIDE = 4  # video length must be 4n+1
SAMPLE_FPS = 24
RANDOM_SEED_MAX = 1_000_000  # --seed omitted: each video gets randint(0, 1_000_000)
CLIP_MAX_TOKENS = 77  # CLIP-L's context length (--text-len-2 cannot exceed it)

# diffusers' ring attention applies each rank's key mask to every rotated key chunk; HunyuanVideo's text padding
# differs between chunks, so ring attention would attend to padding (context_parallel.py).
RING_UNSUPPORTED = ("--ring-degree > 1 is not supported: diffusers' ring attention cannot hold HunyuanVideo's text "
                    "mask; use --ulysses-degree alone (it must divide the model's attention heads)")

# --- text encoding -------------------------------------------------------------------------------------
# The Llama prompt templates (facts: the released model was trained with them). `crop_start` is the
# number of template tokens before the user prompt, dropped from the encoder output. The video template
# is diffusers' HunyuanVideoPipeline DEFAULT_PROMPT_TEMPLATE; the image one is used for 1-frame videos.
PROMPT_TEMPLATES = {
    "dit-llm-encode": {
        "template": (
            "<|start_header_id|>system<|end_header_id|>\n\nDescribe the image by detailing the color, shape, size, "
            "texture, quantity, text, spatial relationships of the objects and background:<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
        ),
        "crop_start": 36,
    },
    "dit-llm-encode-video": {
        "template": (
            "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
            "1. The main content and theme of the video."
            "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
            "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
            "4. background environment, light, style and atmosphere."
            "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
        ),
        "crop_start": 95,
    },
}

# Upstream's default negative prompt, used only for true CFG (--cfg-scale > 1) without --neg-prompt.
NEGATIVE_PROMPT = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, "
    "bad eyes, bad limbs, distortion"
)


def align_to(value: int, alignment: int = SIZE_ALIGNMENT) -> int:
    """Round `value` up to a multiple of `alignment` (upstream: 360 -> 368)."""
    return (value + alignment - 1) // alignment * alignment


def vae_latent_channels(vae: str) -> int:
    """'884-16c-hy' -> 16."""
    match = re.fullmatch(r"\d{2,3}-(\d{1,2})c-\w+", vae)
    if match is None:
        raise UserInputError(f"invalid --vae {vae!r}: expected a name like 884-16c-hy")
    return int(match.group(1))


def prompt_template(video_length: int, image_template: str, video_template: str) -> dict:
    """Upstream encodes 1-frame samples with the image template, videos with the video template."""
    return PROMPT_TEMPLATES[video_template if video_length > 1 else image_template]


def negative_prompt(neg_prompt: str | None, cfg_scale: float) -> str | None:
    """The negative prompt of true CFG, or None when CFG is off (cfg-scale <= 1: one call per step)."""
    if cfg_scale <= 1.0:
        return None
    return (neg_prompt or NEGATIVE_PROMPT).strip()


def video_seeds(seed: int | None, num_videos: int, rng: random.Random | None = None) -> list[int]:
    """One seed per video: seed, seed+1, ...; without --seed an independent random seed each."""
    if seed is None:
        rng = rng or random.Random()
        return [rng.randint(0, RANDOM_SEED_MAX) for _ in range(num_videos)]
    return [seed + i for i in range(num_videos)]


def model_base(environ=None) -> Path:
    """Where the VAE and both text encoders live: $MODEL_BASE, default ./ckpts (relative to the cwd)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(MODEL_BASE_ENV) or DEFAULT_MODEL_BASE)


def dit_weight_file(dit_weight: str | os.PathLike, load_key: str) -> Path:
    """--dit-weight as upstream reads it: a file, or a folder holding `*_model_states.pt`
    (a DeepSpeed dump) or `pytorch_model_{load_key}.pt`. Relative paths are relative to the cwd."""
    path = Path(dit_weight)
    if not path.is_dir():
        return path  # a missing file is reported by the loader, with what it expected there
    states = sorted(path.glob("*_model_states.pt"))
    if states:
        return states[0]
    bare = path / f"pytorch_model_{load_key}.pt"
    if bare.is_file():
        return bare
    raise UserInputError(f"--dit-weight {path}: the folder has no *_model_states.pt or pytorch_model_{load_key}.pt")


def output_dir(save_path: str, save_path_suffix: str) -> Path:
    """--save-path, plus `_{suffix}` when --save-path-suffix is given."""
    return Path(save_path if save_path_suffix == "" else f"{save_path}_{save_path_suffix}")


VIDEO_QUALITY = 5  # imageio's default, which upstream's imageio.mimsave keeps
MAX_NAME_BYTES = 255  # a file name's limit on the usual file systems (ext4, XFS, btrfs, APFS)


def output_file_name(seed: int, prompt: str, now: datetime | None = None) -> str:
    """Upstream's name: `{%Y-%m-%d-%H:%M:%S}_seed{seed}_{prompt[:100] without '/'}.mp4`, with the prompt cut
    further where the name would pass 255 bytes (100 characters of Chinese are 300 bytes in UTF-8; upstream fails
    to write such a video after generating it)."""
    stamp = (now or datetime.now()).strftime("%Y-%m-%d-%H:%M:%S")
    text = prompt[:100].replace("/", "")
    while len(f"{stamp}_seed{seed}_{text}.mp4".encode()) > MAX_NAME_BYTES:
        text = text[:-1]
    return f"{stamp}_seed{seed}_{text}.mp4"
