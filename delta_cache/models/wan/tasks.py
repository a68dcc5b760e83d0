"""Facts about Wan2.1's upstream `generate.py` tasks that users rely on: sizes, defaults, prompts, names.

Kept as data so the front end stays a thin argument parser. Sizes are WIDTH*HEIGHT strings as upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

TASKS = ("t2v-14B", "t2v-1.3B", "i2v-14B", "t2i-14B", "flf2v-14B", "vace-1.3B", "vace-14B")
DEFAULT_TASK = "t2v-14B"  # upstream generate.py's --task default

SIZES = {  # WIDTH*HEIGHT -> (width, height)
    "720*1280": (720, 1280),
    "1280*720": (1280, 720),
    "480*832": (480, 832),
    "832*480": (832, 480),
    "1024*1024": (1024, 1024),
}
DEFAULT_SIZE = "1280*720"
_VIDEO_SIZES = ("720*1280", "1280*720", "480*832", "832*480")
SUPPORTED_SIZES = {
    "t2v-14B": _VIDEO_SIZES,
    "t2v-1.3B": ("480*832", "832*480"),
    "i2v-14B": _VIDEO_SIZES,
    "t2i-14B": tuple(SIZES),
    "flf2v-14B": _VIDEO_SIZES,
    "vace-1.3B": ("480*832", "832*480"),
    "vace-14B": _VIDEO_SIZES,
}

# Upstream's default negative prompt (its config's sample_neg_prompt); there is no flag for it.
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
I2V_NEGATIVE_PREFIX = "镜头晃动，"  # "camera shake"
FLF2V_NEGATIVE_PREFIX = "镜头切换，"  # "camera cut", put before the i2v prefix (flf2v's config copies i2v's)

EXAMPLE_PROMPTS = {
    "t2v": "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    "t2i": "一个朴素端庄的美人",
    "i2v": (
        "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The fluffy-furred feline "
        "gazes directly at the camera with a relaxed expression. Blurred beach scenery forms the background "
        "featuring crystal-clear waters, distant green hills, and a blue sky dotted with white clouds. The cat "
        "assumes a naturally relaxed posture, as if savoring the sea breeze and warm sunlight. A close-up shot "
        "highlights the feline's intricate details and the refreshing atmosphere of the seaside."
    ),
    "flf2v": (
        "CG动画风格，一只蓝色的小鸟从地面起飞，煽动翅膀。小鸟羽毛细腻，胸前有独特的花纹，背景是蓝天白云，阳光明媚。"
        "镜跟随小鸟向上移动，展现出小鸟飞翔的姿态和天空的广阔。近景，仰视视角。"
    ),
    # Upstream pairs it with two reference images from its repository (a girl, a snake), which we do not ship:
    # without --src_ref_images the model draws the scene from the text alone.
    "vace": (
        "在一个欢乐而充满节日气氛的场景中，穿着鲜艳红色春服的小女孩正与她的可爱卡通蛇嬉戏。她的春服上绣着金色吉祥图案，"
        "散发着喜庆的气息，脸上洋溢着灿烂的笑容。蛇身呈现出亮眼的绿色，形状圆润，宽大的眼睛让它显得既友善又幽默。"
        "小女孩欢快地用手轻轻抚摸着蛇的头部，共同享受着这温馨的时刻。周围五彩斑斓的灯笼和彩带装饰着环境，"
        "阳光透过洒在她们身上，营造出一个充满友爱与幸福的新年氛围。"
    ),
}

# Our delta-cache preset per task: i2v/flf2v/t2i/vace reuse the T2V preset of their size (the same 40- or
# 30-block DiT; the paper has none for them). VACE's control blocks are not cached (docs/schedule-format.md).
DEFAULT_PRESETS = {
    "t2v-14B": "wan2.1-t2v-14b",
    "t2v-1.3B": "wan2.1-t2v-1.3b",
    "i2v-14B": "wan2.1-t2v-14b",
    "t2i-14B": "wan2.1-t2v-14b",
    "flf2v-14B": "wan2.1-t2v-14b",
    "vace-1.3B": "wan2.1-t2v-1.3b",
    "vace-14B": "wan2.1-t2v-14b",
}

SAMPLE_FPS = 16
VAE_STRIDE = (4, 8, 8)


@dataclass(frozen=True)
class TaskDefaults:
    frame_num: int
    sample_steps: int
    sample_shift: float


def task_defaults(task: str, size: str) -> TaskDefaults:
    """Upstream defaults for flags left at None."""
    kind = task.split("-")[0]
    frame_num = 1 if kind == "t2i" else 81
    steps = 40 if kind == "i2v" else 50
    if kind in ("flf2v", "vace"):
        shift = 16.0
    elif kind == "i2v" and size in ("832*480", "480*832"):
        shift = 3.0
    else:
        shift = 5.0
    return TaskDefaults(frame_num=frame_num, sample_steps=steps, sample_shift=shift)


def is_image_to_video(task: str) -> bool:
    """Tasks conditioned on images through the CLIP encoder: i2v (one image), flf2v (first and last frame)."""
    return task.startswith(("i2v", "flf2v"))


def is_vace(task: str) -> bool:
    """VACE tasks: text-to-video steered by an optional source video, mask and reference images."""
    return task.startswith("vace")


def negative_prompt(task: str) -> str:
    if task.startswith("flf2v"):
        return FLF2V_NEGATIVE_PREFIX + I2V_NEGATIVE_PREFIX + NEGATIVE_PROMPT
    return I2V_NEGATIVE_PREFIX + NEGATIVE_PROMPT if task.startswith("i2v") else NEGATIVE_PROMPT


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTH*HEIGHT' -> (width, height); the caller has checked that the size is supported."""
    width, height = size.split("*")
    return int(width), int(height)


def i2v_output_size(size: str, image_width: int, image_height: int, spatial_multiple: int = 16) -> tuple[int, int]:
    """(width, height) for i2v and flf2v (from the first frame): upstream keeps the image's aspect ratio at
    the area of `size`, each side rounded down to a multiple of the VAE stride times the patch size."""
    width, height = parse_size(size)
    max_area = width * height
    aspect = image_height / image_width
    out_h = int(math.sqrt(max_area * aspect) // spatial_multiple) * spatial_multiple
    out_w = int(math.sqrt(max_area / aspect) // spatial_multiple) * spatial_multiple
    return out_w, out_h


def vace_source_shape(source_frames: int, source_width: int, source_height: int, size: str, frame_num: int,
                      spatial_multiple: int = 16, temporal_stride: int = VAE_STRIDE[0]) -> tuple[int, int, int]:
    """(frames, width, height) that a VACE source video is resampled to, as upstream's video processor sizes it.

    Upstream takes the whole clip: as many 4n+1 frames as it has (picked evenly over its length), at its
    aspect ratio and at most the area of `size`, within a budget of video tokens (16x16-pixel patches of a
    latent frame) of 81 frames at `size`; the budget traded between length and area, so a source smaller than
    `size` gets more than 81 frames. Here the budget is that of `frame_num` frames (81 by default, upstream's).
    """
    width, height = parse_size(size)
    area_cap = (width // spatial_multiple) * (height // spatial_multiple)
    budget = area_cap * ((frame_num - 1) // temporal_stride + 1)
    area = min(area_cap, (source_height // spatial_multiple) * (source_width // spatial_multiple))
    if area < 1:
        raise ValueError(f"a source video of {source_width}x{source_height} is smaller than one "
                         f"{spatial_multiple}-pixel patch")
    latent_frames = min((source_frames - 1) // temporal_stride + 1, budget // area)
    area = min(area, budget // latent_frames)
    out_h = max(1, round(math.sqrt(area * source_height / source_width)))
    out_w = max(1, area // out_h)
    return (latent_frames - 1) * temporal_stride + 1, out_w * spatial_multiple, out_h * spatial_multiple


def output_file_name(task: str, size: str, ulysses_size: int, ring_size: int, prompt: str,
                     now: datetime | None = None) -> str:
    """Upstream's default output name, written in the working directory."""
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    prompt_part = prompt.replace(" ", "_").replace("/", "_")[:50]
    suffix = ".png" if task.startswith("t2i") else ".mp4"
    return f"{task}_{size}_{ulysses_size}_{ring_size}_{prompt_part}_{stamp}{suffix}"
