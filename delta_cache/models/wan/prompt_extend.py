"""Upstream generate.py's `--use_prompt_extend`: a local instruction-tuned LLM rewrites the prompt into the
detailed description the Wan models were trained on, before the video models load.

Only `local_qwen` with a local model folder (`--prompt_extend_model`, e.g. a downloaded Qwen2.5-Instruct):
nothing is downloaded, so upstream's default model name and its `dashscope` API are refused in one line.
Text only: upstream extends i2v/flf2v prompts with a vision-language model that also sees the image; that is
refused too. The instructions to the LLM are ours (upstream's are not copied); the output, like upstream's,
is sampled with the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UserInputError
from .tasks import is_image_to_video

# What the LLM is asked to do, per target language (upstream's --prompt_extend_target_lang).
INSTRUCTIONS = {
    "en": (
        "You rewrite short prompts for a text-to-video model into one detailed English paragraph of at most "
        "120 words. Keep every subject, action, style and camera instruction of the user's prompt and invent "
        "nothing that contradicts it. Add concrete visual detail: appearance, setting, lighting, motion, camera "
        "angle and shot size. Answer with the rewritten prompt only, without a preamble or quotes."
    ),
    "zh": (
        "你负责把文生视频模型的简短提示词改写成一段详细的中文描述，不超过200字。保留用户提示词中的所有主体、动作、风格和"
        "镜头要求，不要添加与之矛盾的内容。补充具体的视觉细节：外观、场景、光线、运动、镜头角度和景别。"
        "只输出改写后的提示词，不要任何说明或引号。"
    ),
}
MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class PromptExtension:
    """The extension settings the flags ask for (checked before anything loads)."""
    model_dir: Path
    target_lang: str


def check_prompt_extend_flags(task: str, args) -> PromptExtension | None:
    """None without --use_prompt_extend; otherwise the checked settings, or a one-line UserInputError."""
    if not args.use_prompt_extend:
        return None
    if args.prompt_extend_method != "local_qwen":
        raise UserInputError(f"--prompt_extend_method {args.prompt_extend_method} calls an online API, which this "
                             "tool never contacts; use local_qwen with --prompt_extend_model <local folder>")
    if is_image_to_video(task):
        raise UserInputError(f"--use_prompt_extend is not supported for {task} (upstream extends image-task prompts "
                             "with a vision-language model that sees the image); extend the prompt beforehand")
    if args.prompt_extend_model is None:
        raise UserInputError("--use_prompt_extend needs --prompt_extend_model: the local folder of an instruction-tuned "
                             "LLM with a chat template (e.g. Qwen2.5-7B-Instruct); nothing is downloaded")
    model_dir = Path(args.prompt_extend_model)
    if not (model_dir / "config.json").is_file():
        raise UserInputError(f"--prompt_extend_model {model_dir}: not a local model folder (no config.json)")
    return PromptExtension(model_dir=model_dir, target_lang=args.prompt_extend_target_lang)


def extend_prompt(prompt: str, extension: PromptExtension, *, seed: int, device) -> str:
    """The LLM's rewrite of `prompt`; `prompt` itself when the LLM answers nothing (as upstream falls back).

    The LLM is loaded, used and released here, before the video models take the memory."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..common import first_line

    def cannot_load(err: BaseException) -> UserInputError:
        return UserInputError(f"--prompt_extend_model {extension.model_dir}: cannot load it ({first_line(err)})")

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(extension.model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise cannot_load(err) from None
    if not tokenizer.chat_template:  # (checked before the minutes of loading the weights)
        raise UserInputError(f"--prompt_extend_model {extension.model_dir}: its tokenizer has no chat template "
                             "(an instruction-tuned model is needed)")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(extension.model_dir), local_files_only=True,
            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).to(device).eval()
    except (OSError, ValueError, KeyError) as err:
        raise cannot_load(err) from None
    messages = [{"role": "system", "content": INSTRUCTIONS[extension.target_lang]},
                {"role": "user", "content": prompt}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed % 2**63)
        # the model's own generation settings (an instruct model's: sampling), seeded by the run's seed
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    extended = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return extended or prompt
