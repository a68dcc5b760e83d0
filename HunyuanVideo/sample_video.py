"""Drop-in replacement for HunyuanVideo's `sample_video.py`, plus `--delta_cache`.

Same flags, defaults, checkpoint folders and output files as upstream; the models are diffusers'
HunyuanVideoTransformer3DModel / AutoencoderKLHunyuanVideo and transformers' Llama / CLIP text models,
sampled by diffusers' HunyuanVideoPipeline. Example (upstream's README command plus one flag):

    python sample_video.py --video-size 720 1280 --video-length 129 --infer-steps 50 \
        --prompt "A cat walks on the grass, realistic style." --flow-reverse --use-cpu-offload \
        --save-path ./results --delta_cache
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # works without `pip install -e .` too

from delta_cache import parallel  # noqa: E402
from delta_cache.cli import (  # noqa: E402
    OneLineArgumentParser,
    add_cache_flags,
    add_compile_flag,
    add_teacache_flags,
    apply_cache_from_flags,
    bounded_float,
    cache_requested,
    check_output_path,
    check_seed,
    check_teacache_flags,
    run_cli,
    set_offline,
)
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.models.hunyuan_video import config  # noqa: E402
from delta_cache.models.tiny_info import native_size  # noqa: E402

DEFAULT_VIDEO_SIZE, DEFAULT_VIDEO_LENGTH = (720, 1280), 129  # upstream's --video-size / --video-length defaults


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description="Sample a video with HunyuanVideo (drop-in for upstream sample_video.py).")
    net = p.add_argument_group("HunyuanVideo network args")
    net.add_argument("--model", type=str, default="HYVideo-T/2-cfgdistill", choices=config.MODELS)
    net.add_argument("--latent-channels", type=int, default=16, help="Latent channels of the DiT; must match the VAE.")
    net.add_argument("--precision", type=str, default="bf16", choices=config.PRECISIONS,
                     help="Transformer precision (on CUDA; the CPU runs fp32).")
    net.add_argument("--rope-theta", type=int, default=256, help="Theta used in RoPE.")

    extra = p.add_argument_group("Extra models args, including vae, text encoders and tokenizers")
    extra.add_argument("--vae", type=str, default="884-16c-hy", choices=config.VAES, help="Name of the VAE model.")
    extra.add_argument("--vae-precision", type=str, default="fp16", choices=config.PRECISIONS)
    extra.add_argument("--vae-tiling", action="store_true", default=True, help="Tiled VAE decoding (always on).")
    extra.add_argument("--text-encoder", type=str, default="llm", choices=config.TEXT_ENCODERS)
    extra.add_argument("--text-encoder-precision", type=str, default="fp16", choices=config.PRECISIONS)
    extra.add_argument("--text-states-dim", type=int, default=4096,
                       help="Hidden size of the text encoder (read from the checkpoint).")
    extra.add_argument("--text-len", type=int, default=256, help="Maximum length of the text input.")
    extra.add_argument("--tokenizer", type=str, default="llm", choices=config.TEXT_ENCODERS)
    extra.add_argument("--prompt-template", type=str, default=config.IMAGE_TEMPLATE,
                       choices=list(config.PROMPT_TEMPLATES), help="Template for 1-frame samples.")
    extra.add_argument("--prompt-template-video", type=str, default=config.VIDEO_TEMPLATE,
                       choices=list(config.PROMPT_TEMPLATES), help="Template for videos.")
    extra.add_argument("--hidden-state-skip-layer", type=int, default=2, help="Skip layer for hidden states.")
    extra.add_argument("--apply-final-norm", action="store_true", help="Apply the text encoder's final norm.")
    extra.add_argument("--text-encoder-2", type=str, default="clipL", choices=config.TEXT_ENCODERS)
    extra.add_argument("--text-encoder-precision-2", type=str, default="fp16", choices=config.PRECISIONS)
    extra.add_argument("--text-states-dim-2", type=int, default=768,
                       help="Hidden size of the second text encoder (read from the checkpoint).")
    extra.add_argument("--tokenizer-2", type=str, default="clipL", choices=config.TEXT_ENCODERS)
    extra.add_argument("--text-len-2", type=int, default=77, help="Maximum length of the second text input.")

    denoise = p.add_argument_group("Denoise schedule args")
    denoise.add_argument("--denoise-type", type=str, default="flow", help="Only 'flow'.")
    denoise.add_argument("--flow-shift", type=bounded_float(0, above=True), default=config.FLOW_SHIFT,
                         help="Shift factor for flow matching.")
    denoise.add_argument("--flow-reverse", action="store_true",
                         help="Sample t=1 -> 0 (always done here; upstream needs the flag).")
    denoise.add_argument("--flow-solver", type=str, default="euler", help="Only 'euler'.")
    denoise.add_argument("--use-linear-quadratic-schedule", action="store_true", help="Accepted, unused (as upstream).")
    denoise.add_argument("--linear-schedule-end", type=int, default=25, help="Accepted, unused (as upstream).")

    inference = p.add_argument_group("Inference args")
    inference.add_argument("--model-base", type=str, default="ckpts",
                           help="Must exist (as upstream); the VAE and text encoders come from $MODEL_BASE.")
    inference.add_argument("--dit-weight", type=str, default=config.DEFAULT_DIT_WEIGHT,
                           help="Transformer weights file (or a folder holding *_model_states.pt).")
    inference.add_argument("--model-resolution", type=str, default="540p", choices=config.MODEL_RESOLUTIONS,
                           help="Accepted, unused (as upstream).")
    inference.add_argument("--load-key", type=str, default="module", help="'module' or 'ema' weights.")
    inference.add_argument("--use-cpu-offload", action="store_true", help="Offload models to the CPU between uses.")
    inference.add_argument("--batch-size", type=int, default=1, help="Must be 1.")
    inference.add_argument("--infer-steps", type=int, default=50, help="Number of denoising steps.")
    inference.add_argument("--disable-autocast", action="store_true",
                           help="No autocast for the denoising loop and VAE decoding.")
    inference.add_argument("--save-path", type=str, default="./results", help="Folder for the videos.")
    inference.add_argument("--save-path-suffix", type=str, default="", help="Appended to the folder as _SUFFIX.")
    inference.add_argument("--name-suffix", type=str, default="", help="Accepted, unused (as upstream).")
    inference.add_argument("--num-videos", type=int, default=1, help="Videos per prompt (seeds seed, seed+1, ...).")
    inference.add_argument("--video-size", type=int, nargs="+", default=None,
                           help="HEIGHT WIDTH, rounded up to multiples of 16 (default 720 1280; a tiny trained "
                                "checkpoint's native size).")
    inference.add_argument("--video-length", type=int, default=None,
                           help="Frames, 4n+1 (default 129; a tiny trained checkpoint's native count at its size).")
    inference.add_argument("--prompt", type=str, default=None, help="The prompt (required).")
    inference.add_argument("--seed-type", type=str, default="auto", choices=config.SEED_TYPES,
                           help="Accepted, unused (as upstream).")
    inference.add_argument("--seed", type=int, default=None, help="Seed (default: random per video).")
    inference.add_argument("--neg-prompt", type=str, default=None, help="Negative prompt (used when --cfg-scale > 1).")
    inference.add_argument("--cfg-scale", type=bounded_float(0), default=1.0,
                           help="True classifier-free guidance when > 1.")
    inference.add_argument("--embedded-cfg-scale", type=bounded_float(0), default=config.EMBEDDED_GUIDANCE_SCALE,
                           help="Embedded (distilled) guidance scale.")
    inference.add_argument("--use-fp8", action="store_true", help="Load *_fp8.pt weights with their *_fp8_map.pt.")
    inference.add_argument("--reproduce", action="store_true", help="Accepted, unused.")

    parallel_args = p.add_argument_group("Parallel args")
    parallel_args.add_argument("--ulysses-degree", type=int, default=1,
                               help="Ulysses sequence-parallel degree (under torchrun; must equal the process count).")
    parallel_args.add_argument("--ring-degree", type=int, default=1,
                               help="Ring degree (1 only: see docs/hunyuanvideo.md).")

    add_cache_flags(p, config.DEFAULT_PRESET)
    add_compile_flag(p)
    add_teacache_flags(p)
    return p


def validate(args) -> None:
    """Upstream's checks plus ours; fills seeds. Raises UserInputError with one line."""
    if args.prompt is None:
        raise UserInputError("--prompt is required")
    args.prompt = args.prompt.strip()  # as upstream; the output file name uses the stripped prompt
    apply_size_defaults(args)
    if len(args.video_size) != 2:
        raise UserInputError(f"--video-size takes two values, HEIGHT WIDTH (e.g. --video-size 720 1280), "
                             f"got {len(args.video_size)}")
    if min(args.video_size) <= 0 or args.video_length <= 0:
        raise UserInputError(f"--video-size and --video-length must be positive, got {args.video_size} "
                             f"and {args.video_length}")
    if (args.video_length - 1) % config.VAE_TEMPORAL_STRIDE != 0:
        raise UserInputError(f"--video-length must be 4n+1 (1, 5, ..., 125, 129), got {args.video_length}")
    if args.batch_size != 1:
        raise UserInputError(f"--batch-size must be 1, got {args.batch_size} (use --num-videos for more videos)")
    check_output_path("--save-path", config.output_dir(args.save_path, args.save_path_suffix), folder=True)
    for flag, value in (("--infer-steps", args.infer_steps), ("--num-videos", args.num_videos),
                        ("--text-len", args.text_len)):
        if value < 1:
            raise UserInputError(f"{flag} must be positive, got {value}")
    if args.ring_degree > 1:
        raise UserInputError(config.RING_UNSUPPORTED)
    parallel.check_degrees(args.ulysses_degree, args.ring_degree, ("--ulysses-degree", "--ring-degree"))
    if args.ulysses_degree > 1:
        if args.use_cpu_offload:
            raise UserInputError("--use-cpu-offload does not work with multi-GPU sampling; leave it out")
    if args.denoise_type != "flow":
        raise UserInputError(f"--denoise-type {args.denoise_type} is not supported (only 'flow', as upstream)")
    if args.flow_solver != "euler":
        raise UserInputError(f"--flow-solver {args.flow_solver} is not supported (only 'euler', as upstream)")
    if args.text_encoder != "llm" or args.tokenizer != "llm":
        raise UserInputError("--text-encoder/--tokenizer other than 'llm' is not supported: the first text encoder "
                             "is the Llama model in $MODEL_BASE/text_encoder")
    if args.text_encoder_2 != "clipL" or args.tokenizer_2 != "clipL":
        raise UserInputError("--text-encoder-2/--tokenizer-2 other than 'clipL' is not supported: the second text "
                             "encoder is CLIP-L in $MODEL_BASE/text_encoder_2")
    if not 1 <= args.text_len_2 <= config.CLIP_MAX_TOKENS:
        raise UserInputError(f"--text-len-2 must be between 1 and {config.CLIP_MAX_TOKENS} (CLIP-L), "
                             f"got {args.text_len_2}")
    if args.hidden_state_skip_layer < 0:
        raise UserInputError(f"--hidden-state-skip-layer must be >= 0, got {args.hidden_state_skip_layer}")
    vae_channels = config.vae_latent_channels(args.vae)
    if args.latent_channels != vae_channels:
        raise UserInputError(f"--latent-channels {args.latent_channels} must match the VAE channels ({vae_channels})")
    if not Path(args.model_base).exists():
        raise UserInputError(f"--model-base {args.model_base}: no such folder")
    args.delta_cache = cache_requested(args)
    check_teacache_flags(args, args.ulysses_degree * args.ring_degree)
    check_seed("--seed", args.seed, args.num_videos)
    args.seeds = config.video_seeds(args.seed, args.num_videos)


def apply_size_defaults(args) -> None:
    """Upstream's 720x1280, 129 frames; for a tiny model trained by scripts/train_tiny.py (`tiny_model.json` in
    --model-base, else in $MODEL_BASE, where its weights are) its native size, and its native frame count
    when the video has that size."""
    native = next(filter(None, (native_size(folder) for folder in (args.model_base, config.model_base()))), None)
    if args.video_size is None:
        args.video_size = [native.height, native.width] if native else list(DEFAULT_VIDEO_SIZE)
    if args.video_length is None:
        at_native = native is not None and [config.align_to(v) for v in args.video_size] == [
            config.align_to(native.height), config.align_to(native.width)]
        args.video_length = native.num_frames if at_native else DEFAULT_VIDEO_LENGTH


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    validate(args)
    set_offline()

    from delta_cache.schedule import load_schedule

    schedule = None  # a bad schedule file fails here, before the seconds of imports and minutes of loading
    if args.delta_cache:
        schedule = load_schedule(args.cache_schedule or config.DEFAULT_PRESET)

    with parallel.process_group(args.ulysses_degree, args.ring_degree) as group:  # rank 0 of 1 for a plain run
        _sample(args, schedule, group)


def check_model_flags(args, dit_weight, guidance_embeds: bool | None, text_encoder_layers: int | None) -> None:
    """--model against the transformer's guidance embedder, --hidden-state-skip-layer against the text encoder's
    depth (each skipped where it is not known)."""
    if guidance_embeds is not None and bool(guidance_embeds) != config.GUIDANCE_EMBEDDED[args.model]:
        has = "has" if guidance_embeds else "has no"
        raise UserInputError(f"--model {args.model} does not match {dit_weight}, which {has} a guidance embedder")
    if text_encoder_layers is not None and args.hidden_state_skip_layer > text_encoder_layers:
        raise UserInputError(f"--hidden-state-skip-layer {args.hidden_state_skip_layer} exceeds the text encoder's "
                             f"{text_encoder_layers} layers")


def _sample(args, schedule, group: parallel.ProcessGroup) -> None:
    import torch
    from loguru import logger

    from delta_cache.cli import check_declared_model, log_cache_plan, summary_line
    from delta_cache.models.hunyuan_video.checkpoint import (declared_block_depths, declared_text_encoder_layers,
                                                             declared_transformer_config, find_diffusers_folder,
                                                             load_hunyuan_video_components)
    from delta_cache.models.hunyuan_video.pipeline import TextEncoding, build_pipeline, generate, token_grid
    from delta_cache.video import save_video, to_uint8_as_upstream

    if group.is_parallel:
        args.seeds = parallel.from_rank0(args.seeds)  # random seeds are drawn per process
    parallel.log_from_main_only(group)
    device = group.device
    precisions = dict(dtype=args.precision, vae_dtype=args.vae_precision, text_encoder_dtype=args.text_encoder_precision,
                      text_encoder_2_dtype=args.text_encoder_precision_2)
    if device.type == "cuda":
        dtypes = {name: getattr(torch, config.PRECISION_DTYPES[p]) for name, p in precisions.items()}
    else:  # half precision on the CPU is slow or unsupported: everything runs fp32 there
        dtypes = dict.fromkeys(precisions, torch.float32)

    diffusers_folder = find_diffusers_folder(args.dit_weight, args.model_base)
    if diffusers_folder is not None:
        dit_weight = model_base = diffusers_folder
    else:
        dit_weight, model_base = config.dit_weight_file(args.dit_weight, args.load_key), config.model_base()
        if not model_base.is_dir():
            raise UserInputError(f"the VAE and text encoders are read from ${config.MODEL_BASE_ENV} (default "
                                 f"{config.DEFAULT_MODEL_BASE}), as upstream does, and {model_base} is no folder: set "
                                 f"{config.MODEL_BASE_ENV} (--model-base does not move them)")
    declared = declared_transformer_config(dit_weight, diffusers_folder, args.load_key)
    check_declared_model(declared, declared_block_depths(declared), schedule, group.ulysses_degree,
                         "--ulysses-degree", ring_supported=False)
    # --model and --hidden-state-skip-layer against the files' configs before ~25 GB load (again after loading,
    # for a checkpoint whose config does not say)
    check_model_flags(args, dit_weight, declared.get("guidance_embeds"), declared_text_encoder_layers(model_base))
    logger.info(f"loading HunyuanVideo: transformer {dit_weight}, VAE and text encoders from {model_base} "
                f"({device}, {', '.join(f'{k}={v}' for k, v in dtypes.items())})")
    components = load_hunyuan_video_components(
        dit_weight, model_base, load_key=args.load_key, use_fp8=args.use_fp8, vae_name=args.vae, **dtypes,
    )
    transformer = components.transformer
    check_model_flags(args, dit_weight, transformer.config.guidance_embeds,
                      components.text_encoder.config.num_hidden_layers)
    transformer.rope.theta = float(args.rope_theta)  # not stored in the checkpoint

    handle = None
    if schedule is not None:
        # diffusers' HunyuanVideoPipeline passes no step index: the cache counts calls against this many steps.
        handle = apply_cache_from_flags(transformer, schedule, args, num_inference_steps=args.infer_steps)
    teacache = None
    if args.teacache_thresh is not None:
        from delta_cache.cli import apply_teacache_from_flags
        from delta_cache.models.hunyuan_video.teacache import teacache_settings

        teacache = apply_teacache_from_flags(transformer, teacache_settings(), args.teacache_thresh, args.infer_steps)
        logger.info(f"TeaCache: threshold {args.teacache_thresh}, modulated-input indicator, published coefficients")

    pipe = build_pipeline(components, shift=args.flow_shift)
    if not group.is_main:
        pipe.set_progress_bar_config(disable=True)  # one progress bar, rank 0's
    if device.type == "cuda":
        if args.use_cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    # Upstream runs the loop under bf16/fp16 autocast (plain diffusers does not: --disable-autocast matches it);
    # an fp32 run has none (autocast to fp32 is refused by torch with a warning and turned off anyway).
    autocast = device.type == "cuda" and not args.disable_autocast and dtypes["dtype"] != torch.float32
    vae_autocast = autocast and dtypes["vae_dtype"] != torch.float32

    height, width = (config.align_to(size) for size in args.video_size)
    if group.is_parallel:  # after the cache hooks, which must come first
        from delta_cache.models.hunyuan_video.context_parallel import enable_context_parallel

        grid = token_grid(pipe, width=width, height=height, num_frames=args.video_length)
        parallel.check_model_fits(group, num_heads=transformer.config.num_attention_heads,
                                  num_tokens=grid[0] * grid[1] * grid[2], heads_flag="--ulysses-degree",
                                  ring_supported=False)
        enable_context_parallel(transformer, group)
        logger.info(f"context parallel over {group.world_size} processes: Ulysses {group.ulysses_degree}")
    if args.compile:  # last: after the cache's and the context parallelism's hooks
        from delta_cache.cli import compile_transformer

        compile_transformer(transformer)
        logger.info("compiling the transformer's blocks (torch.compile): the first steps include the compilation")
    text = TextEncoding(
        template=config.prompt_template(args.video_length, args.prompt_template, args.prompt_template_video),
        text_len=args.text_len, text_len_2=args.text_len_2, hidden_state_skip_layer=args.hidden_state_skip_layer,
        apply_final_norm=args.apply_final_norm, pad_to_multiple=args.ulysses_degree,
    )
    negative_prompt = config.negative_prompt(args.neg_prompt, args.cfg_scale)
    if not args.flow_reverse:  # warned here, after the checks, so that an input error stays a single line
        logger.warning("--flow-reverse not given: upstream would sample from t=0 to t=1 (noise); sampling t=1 -> 0")
    if handle is not None:
        log_cache_plan(handle, args.infer_steps)
    save_dir = config.output_dir(args.save_path, args.save_path_suffix)
    for seed in args.seeds:
        if handle is not None:
            handle.reset_stats()  # one summary per video
        if teacache is not None:
            teacache.reset_stats()
        logger.info(f"sampling {height}x{width}, {args.video_length} frames, {args.infer_steps} steps, "
                    f"seed {seed}: {args.prompt!r}")
        result = generate(
            pipe, prompt=args.prompt, negative_prompt=negative_prompt, height=height, width=width,
            num_frames=args.video_length, num_inference_steps=args.infer_steps,
            embedded_guidance_scale=args.embedded_cfg_scale, cfg_scale=args.cfg_scale, seed=seed, text=text,
            autocast_dtype=dtypes["dtype"] if autocast else None,
            vae_autocast_dtype=dtypes["vae_dtype"] if vae_autocast else None,
        )
        if not group.is_main:  # every rank holds the same video; rank 0 writes it
            continue
        save_path = save_dir / config.output_file_name(seed, args.prompt)
        save_video(to_uint8_as_upstream(result.frames), save_path, fps=config.SAMPLE_FPS, quality=config.VIDEO_QUALITY)
        print(f"Sample save to: {save_path}")
        print(summary_line(result.denoise_seconds, handle.stats() if handle is not None else None,
                           processes=group.world_size, teacache_stats=teacache.stats if teacache is not None else None))


if __name__ == "__main__":
    run_cli(main)
