#!/usr/bin/env python
"""Train a tiny text-to-video model on synthetic moving shapes and save it in the upstream checkpoint layout.

    python scripts/train_tiny.py --family wan --out ckpts/tiny-wan-trained --seed 0 --device cuda
    python scripts/train_tiny.py --family hunyuan_video --out ckpts/tiny-hunyuan-trained --seed 0 --device cuda

Stages (the state after each checkpoint is in --work_dir; --resume continues from it, reproducibly: every
step's data and noise derive from (seed, stage, step) only; --stop_after_minutes pauses cleanly):
  1. vae      the family's VAE on random crops of synthetic training videos (L1 + MSE + small KL).
  2. latents  encode --num_videos training videos at the native size; fold the per-channel latent statistics
              into the VAE (see delta_cache/training/) so the upstream constants normalise them.
  3. dit      the transformer (full depth) with flow matching on those latents; text from tiny text encoders
              (frozen, or trained with --train_text_encoder) whose tokenizers know every grammar word; CFG
              dropout; EMA of the weights.
  4. decoder  (--decoder_steps) the VAE's decoding half alone, on the frozen encoder's posterior means: sharper
              decoding without changing what the transformer's latents mean.
  5. save     the transformer's (and trained text encoders') EMA weights and the VAE, upstream layout, into --out.

Families (FAMILIES; one adapter each in delta_cache/training/: modules, VAE objective, latent fold, prompt
encoding, flow-matching loss, writer; the batches are in training/data.py, the step loop in training/loop.py):
  wan            AutoencoderKLWan, WanTransformer3DModel (40 blocks), UMT5; fp16 upstream Wan2.1 layout
                 (loads with Wan2.1/generate.py --ckpt_dir <out>).
  hunyuan_video  AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel (20 double + 40 single blocks,
                 embedded guidance), Llama + CLIP text models; upstream ckpts/ layout, transformer in bf16
                 (loads with HunyuanVideo/sample_video.py --model-base <out> and MODEL_BASE=<out>).
Model sizes and --shift default per family (the adapters' `defaults`). See docs/tiny-models.md for the recipes
and timings. --pack_state / --unpack_state carry a run between machines that keep nothing (runs/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from delta_cache.cli import OneLineArgumentParser, bounded_float, positive_int, run_cli, set_offline  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.synthetic.videos import make_video  # noqa: E402
from delta_cache.training import channel_statistics, reconstruction_loss, sample_sigmas, shift_sigmas  # noqa: E402
from delta_cache.training import hunyuan_video as hunyuan_training  # noqa: E402
from delta_cache.training import wan as wan_training  # noqa: E402
from delta_cache.training.carry import pack_state, unpack_state  # noqa: E402
from delta_cache.training.data import dit_batch, init_seed, vae_batch, vae_probe_batch  # noqa: E402
from delta_cache.training.loop import (  # noqa: E402
    LATENTS_FILE,
    LOG_FILE,
    STATE_FILE,
    TimeBudget,
    TrainingPaused,
    autocast,
    learning_rate,
    log,
    restart_step,
    run_steps,
    save_state,
    start_ema,
    update_ema,
)
from delta_cache.video import to_vae_input  # noqa: E402

INFO_FILE = "tiny_model.json"  # written next to the checkpoint: native size, prompt grammar, recipe
# The fixed-batch probes draw their noise from this seed whatever --seed is, so that probe losses of runs
# with different seeds (a continuation with --init_from, say) compare on the same batch.
PROBE_SEED = 0
# Arguments that shape the models or the data: a resumed run must use the same values.
_FIXED_ARGS = ("family", "seed", "num_frames", "height", "width", "num_layers", "num_heads", "head_dim", "ffn_dim",
               "text_dim", "vae_base_dim", "num_videos", "num_single_layers", "train_text_encoder",
               "vae_norm_groups")
# Fixed only once the latents exist (a run still in its VAE stage may change them; the state takes the new value).
_FIXED_FROM_LATENTS = ("num_videos",)
# Fixed flags added after states were first written: their value in an older state (compared on resume, and
# filled in where a run is rebuilt from its state).
_FIXED_ARG_DEFAULTS = {"train_text_encoder": False, "vae_norm_groups": None}
# Modules, objectives, prompt encoding and writer per family (delta_cache/training/family.py). Each family's
# defaults fill the flags given as None below (a state saved before a flag existed has no entry for it,
# which reads as None: the Wan values of the new flags stay None).
FAMILIES = {family.name: family for family in (wan_training.FAMILY, hunyuan_training.FAMILY)}
# Every family's trained components (what --init_components chooses from).
COMPONENTS = tuple(dict.fromkeys(c for family in FAMILIES.values() for c in family.components))


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="wan", choices=sorted(FAMILIES), help="model family")
    p.add_argument("--out", type=Path, help="checkpoint folder to write (must be empty or new)")
    p.add_argument("--work_dir", type=Path, help="training state and latents (default: <out>.work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from the state in --work_dir")
    p.add_argument("--threads", type=positive_int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--stop_after_minutes", type=float,
                   help="stop cleanly once this much wall-clock time has passed: the state is saved after the "
                        "current step or stage and --resume continues (for machines lent for a limited time)")
    p.add_argument("--export_state", action="store_true",
                   help="do not train: write the training state in --work_dir as a loadable checkpoint to --out (the "
                        "transformer's EMA weights so far, the VAE, the text encoders) and exit, to evaluate a long "
                        "run midway; the model flags come from the state (it must have reached the transformer "
                        "stage)")
    p.add_argument("--check_vae_state", action="store_true",
                   help="do not train: run the VAE round-trip check (--vae_check_videos held-out videos) on the VAE "
                        "of the training state in --work_dir, at any stage, print it, add it to the run's log, and "
                        "exit")
    p.add_argument("--pack_state", type=Path, metavar="FILE",
                   help="do not train: write the run in --work_dir to FILE, small enough to commit (weights in fp16, "
                        "no optimizer moments, the log compressed; delta_cache/training/carry.py), and exit")
    p.add_argument("--unpack_state", type=Path, metavar="FILE",
                   help="do not train: restore a --pack_state FILE into an empty --work_dir and exit; then --resume "
                        "continues it as a warm restart (the learning rate warms up again from the packed step)")
    p.add_argument("--init_from", type=Path,
                   help="warm start: begin from the weights of a checkpoint this script wrote (e.g. a committed "
                        "one); its tiny_model.json supplies the model-shape and size flags not given")
    p.add_argument("--init_components", nargs="+", choices=COMPONENTS, default=None,
                   help="with --init_from: the components to start from (default: all of the family's); e.g. "
                        "`vae text_encoder` trains a new transformer, of any shape (the transformer's shape "
                        "flags are then not inherited), on a trained VAE")
    # stages
    p.add_argument("--vae_steps", type=int, default=4000)
    p.add_argument("--dit_steps", type=int, default=30000)
    p.add_argument("--decoder_steps", type=int, default=0,
                   help="after the transformer: fine-tune the VAE decoder alone (encoder frozen, so the latents "
                        "keep their meaning) on the same crops")
    p.add_argument("--decoder_lr", type=float, default=2e-4,
                   help="peak learning rate of the decoder stage (a trained decoder lost sharpness at 1e-3)")
    p.add_argument("--batch_size", type=int, default=32, help="transformer batch size")
    p.add_argument("--vae_batch_size", type=int, default=8)
    p.add_argument("--lr", type=bounded_float(0, above=True), default=3e-4, help="transformer learning rate (AdamW)")
    p.add_argument("--vae_lr", type=bounded_float(0, above=True), default=5e-4)
    p.add_argument("--warmup_steps", type=int, default=500, help="linear learning-rate warm-up (both stages)")
    p.add_argument("--lr_decay", default="cosine", choices=["cosine", "none"],
                   help="after the warm-up: cosine decay to --min_lr_ratio x the rate at the stage's last step, or "
                        "a constant rate (short runs gain much from the decay)")
    p.add_argument("--min_lr_ratio", type=float, default=0.1, help="final learning rate / base rate (cosine)")
    p.add_argument("--num_videos", type=int, default=20000,
                   help="training videos encoded for the transformer (at a time, with --refresh_videos_every)")
    p.add_argument("--refresh_videos_every", type=int, default=0, metavar="STEPS",
                   help="every STEPS transformer steps, train on the next --num_videos training videos instead "
                        "(encoded when first needed): more distinct videos, and a resume on a fresh machine "
                        "re-encodes only the current ones (0: the same videos for the whole stage)")
    p.add_argument("--checkpoint_every", type=int, default=1000, help="steps between saved training states")
    # data
    p.add_argument("--num_frames", type=int, default=17, help="native frames (4n+1)")
    p.add_argument("--height", type=int, default=128, help="native height (multiple of 16)")
    p.add_argument("--width", type=int, default=128, help="native width (multiple of 16)")
    p.add_argument("--vae_frames", type=int,
                   help="frames per VAE training clip (4n+1; default: --num_frames, the whole clip: a VAE trained on "
                        "shorter clips decodes the later latent frames of a sample badly)")
    p.add_argument("--vae_crop", type=int, default=64, help="square crop for VAE training (0: whole frame)")
    p.add_argument("--vae_check_videos", type=int, default=12,
                   help="held-out videos whose VAE round trip (encode -> decode -> quality analyser) is checked "
                        "after the VAE stage: the transformer cannot draw better than its VAE (0: skip)")
    p.add_argument("--min_vae_agreement", type=float, default=0.0,
                   help="stop after the VAE stage (resumable: --resume with more --vae_steps) when fewer of the "
                        "checked round trips than this share agree with their prompt (default 0: report only)")
    p.add_argument("--vae_object_crops", type=float, default=0.5,
                   help="share of VAE crops centred on an object (objects are a small part of the frame: uniform "
                        "crops of a small size mostly teach background; 0 = uniform crops only)")
    p.add_argument("--vae_object_weight", type=float, default=4.0,
                   help="extra weight of object pixels (and a 2-pixel border around them) in the reconstruction "
                        "loss of the VAE and decoder stages: pixel weight 1 + this on objects, 1 elsewhere (their "
                        "colours and corners are what the analyser reads; 0 = plain mean, as runs before "
                        "2026-11-30)")
    p.add_argument("--vae_edge_weight", type=float, default=0.0,
                   help="weight of an edge term in the same loss: the (object-weighted) mean absolute difference "
                        "between the reconstruction's and the video's neighbouring-pixel differences (0 = off; 1 "
                        "won a CPU A/B, docs/tiny-models.md)")
    # models (None: the family's default, FAMILIES[family].defaults)
    p.add_argument("--num_layers", type=int, help="transformer blocks (wan 40; hunyuan_video: double-stream, 20)")
    p.add_argument("--num_single_layers", type=int, help="hunyuan_video single-stream blocks (40)")
    p.add_argument("--num_heads", type=positive_int, help="attention heads (wan 4, hunyuan_video 3); heads x head dim "
                   "should be >= 64, the values of an output token")
    p.add_argument("--head_dim", type=int, help="attention head dim (24)")
    p.add_argument("--ffn_dim", type=int, help="feed-forward width (wan 384, hunyuan_video 288 = 4x the width)")
    p.add_argument("--text_dim", type=int,
                   help="text encoder width (32): wan UMT5 d_model; hunyuan_video Llama and CLIP hidden size")
    p.add_argument("--vae_base_dim", type=int, help="VAE width of the first level (12)")
    p.add_argument("--vae_norm_groups", type=int,
                   help="hunyuan_video: the VAE's GroupNorm groups (default: --vae_base_dim / 4, the released "
                        "VAE's 4 channels a group)")
    # objective
    p.add_argument("--shift", type=bounded_float(0, above=True),
                   help="flow shift of the training sigmas (the sampler's default: wan 5, hunyuan_video 7)")
    p.add_argument("--cfg_dropout", type=bounded_float(0, 1), default=0.1, help="share of unconditional samples")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer's repeated blocks (diffusers' compile_repeated_blocks): "
                        "a minute of compiling, then ~1.7x faster steps on a CPU")
    p.add_argument("--train_text_encoder", action="store_true",
                   help="train the tiny text encoder(s) with the transformer (default: frozen at their random init)")
    p.add_argument("--kl_weight", type=bounded_float(0), default=1e-4)
    p.add_argument("--ema_decay", type=bounded_float(0, 1), default=0.999)
    args = p.parse_args(argv)
    utilities = [flag for flag, given in (("--export_state", args.export_state), ("--pack_state", args.pack_state),
                                          ("--unpack_state", args.unpack_state),
                                          ("--check_vae_state", args.check_vae_state)) if given]
    if len(utilities) > 1:
        raise UserInputError(f"{' and '.join(utilities)} are separate commands: give one")
    if utilities:
        if args.work_dir is None:
            raise UserInputError(f"{utilities[0]} needs --work_dir (the training run)")
        if args.export_state and args.out is None:
            raise UserInputError("--export_state needs --out (the checkpoint folder to write)")
        return args
    if args.out is None:
        raise UserInputError("--out is required (the checkpoint folder to write)")
    args.work_dir = args.work_dir or args.out.with_name(args.out.name + ".work")
    if args.init_components is not None and args.init_from is None:
        raise UserInputError("--init_components needs --init_from")
    if args.init_from is not None:
        args.init_components = args.init_components or list(FAMILIES[args.family].components)
        unknown = sorted(set(args.init_components) - set(FAMILIES[args.family].components))
        if unknown:
            raise UserInputError(f"--init_components: a {args.family} model has no {', '.join(unknown)} (it has "
                                 f"{', '.join(FAMILIES[args.family].components)})")
        inherit_shape(args, p)
    fill_family_defaults(args)
    if args.vae_frames is None:
        args.vae_frames = args.num_frames
    return args


def fill_family_defaults(args) -> None:
    """The family's defaults for the model flags left as None (or absent: a state saved before a flag existed)."""
    for name, value in FAMILIES[args.family].defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def require_empty_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"--out {out} exists and is not empty")


# What a warm start inherits from the initial checkpoint's recipe unless given on the command line; the
# transformer's own shape only when the transformer is one of the --init_components.
_INHERITED_ARGS = ("num_frames", "height", "width", "text_dim", "vae_base_dim", "vae_norm_groups", "shift")
_TRANSFORMER_SHAPE_ARGS = ("num_layers", "num_single_layers", "num_heads", "head_dim", "ffn_dim")


def inherit_shape(args, parser: argparse.ArgumentParser) -> None:
    """Fill the shape flags the user left at their defaults from `--init_from`'s tiny_model.json recipe."""
    path = args.init_from / INFO_FILE
    try:
        recipe = json.loads(path.read_text())["recipe"]
    except FileNotFoundError:
        raise UserInputError(f"--init_from {args.init_from}: no {INFO_FILE} (not a checkpoint written by "
                             "scripts/train_tiny.py)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"--init_from: {path} is malformed ({type(err).__name__}: {err})") from None
    if recipe.get("family") != args.family:
        raise UserInputError(f"--init_from {args.init_from} holds a {recipe.get('family')} model, not --family "
                             f"{args.family}")
    inherited = _INHERITED_ARGS + (_TRANSFORMER_SHAPE_ARGS if "transformer" in args.init_components else ())
    for name in inherited:
        if getattr(args, name) == parser.get_default(name) and recipe.get(name) is not None:
            setattr(args, name, recipe[name])


def validate(args) -> None:
    if args.family == "hunyuan_video":
        validate_hunyuan_video(args)
    else:
        for flag in ("num_single_layers", "vae_norm_groups"):
            if getattr(args, flag) is not None:
                raise UserInputError(f"--{flag} is a hunyuan_video flag")
    if args.num_frames < 1 or (args.num_frames - 1) % 4 or args.vae_frames < 1 or (args.vae_frames - 1) % 4:
        raise UserInputError("--num_frames and --vae_frames must be 4n+1")
    if args.vae_frames > args.num_frames:
        raise UserInputError("--vae_frames must not exceed --num_frames")
    if min(args.height, args.width) < 16 or args.vae_crop < 0:
        raise UserInputError("--height and --width must be at least 16, --vae_crop at least 0")
    if args.seed < 0 or args.warmup_steps < 0:
        raise UserInputError("--seed and --warmup_steps must be >= 0")
    if args.height % 16 or args.width % 16 or args.vae_crop % 16 or args.vae_crop > min(args.height, args.width):
        raise UserInputError("--height, --width and --vae_crop must be multiples of 16, the crop within the frame")
    if args.stop_after_minutes is not None and not args.stop_after_minutes > 0:
        raise UserInputError(f"--stop_after_minutes must be > 0, got {args.stop_after_minutes}")
    if not 0 <= args.min_lr_ratio <= 1:
        raise UserInputError(f"--min_lr_ratio must be between 0 and 1, got {args.min_lr_ratio}")
    if not 0 <= args.vae_object_crops <= 1:
        raise UserInputError(f"--vae_object_crops must be between 0 and 1, got {args.vae_object_crops}")
    if not args.vae_object_weight >= 0:
        raise UserInputError(f"--vae_object_weight must be >= 0, got {args.vae_object_weight}")
    if not args.vae_edge_weight >= 0:
        raise UserInputError(f"--vae_edge_weight must be >= 0, got {args.vae_edge_weight}")
    if not 0 <= args.min_vae_agreement <= 1 or args.vae_check_videos < 0:
        raise UserInputError("--min_vae_agreement must be between 0 and 1 and --vae_check_videos >= 0")
    if args.min_vae_agreement > 0 and args.vae_check_videos == 0:
        raise UserInputError("--min_vae_agreement needs --vae_check_videos > 0")
    if args.family == "wan" and (args.head_dim % 2 or args.head_dim < 6):
        raise UserInputError("--head_dim must be even and >= 6 (rope splits it into t/h/w parts)")
    if args.refresh_videos_every < 0:
        raise UserInputError(f"--refresh_videos_every must be >= 0, got {args.refresh_videos_every}")
    if min(args.batch_size, args.vae_batch_size, args.num_videos, args.checkpoint_every) < 1 or \
            min(args.vae_steps, args.dit_steps, args.decoder_steps) < 0:
        raise UserInputError("batch sizes, --num_videos and --checkpoint_every must be >= 1, steps >= 0")
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        raise UserInputError(f"--device {args.device}: expected cpu, or cuda on a machine with a GPU")
    require_empty_out(args.out)
    if (args.work_dir / STATE_FILE).exists() and not args.resume:
        raise UserInputError(f"{args.work_dir} holds a training state: pass --resume, or another --work_dir")
    if args.resume and not (args.work_dir / STATE_FILE).exists():
        raise UserInputError(f"--resume: no training state in {args.work_dir}")
    if args.init_from is not None and args.init_from.resolve() == args.out.resolve():
        raise UserInputError("--init_from and --out must differ (write the new weights elsewhere, then swap)")


def validate_hunyuan_video(args) -> None:
    width = args.num_heads * args.head_dim
    if args.head_dim % 4 or args.head_dim < 8:
        raise UserInputError("--head_dim must be a multiple of 4 and >= 8 (rope splits it into t/h/w parts)")
    if min(args.num_layers, args.num_single_layers) < 0 or args.num_layers + args.num_single_layers < 1:
        raise UserInputError("--num_layers and --num_single_layers must be >= 0, with at least one block")
    if args.num_heads < 1 or args.ffn_dim < 1 or int(width * (args.ffn_dim / width)) != args.ffn_dim:
        # the upstream layout stores no config: the loader reads mlp_ratio = ffn_dim / width from the shapes
        raise UserInputError(f"--ffn_dim {args.ffn_dim}: the loader reads mlp_ratio = ffn_dim / width and needs "
                             f"int(width * mlp_ratio) == ffn_dim (width {width}; e.g. --ffn_dim {4 * width})")
    if args.text_dim % 4 or args.text_dim < 4:
        raise UserInputError("--text_dim must be a multiple of 4 (2 heads with an even head dim)")
    if args.vae_base_dim % 4 or args.vae_base_dim < 4:
        raise UserInputError("--vae_base_dim must be a multiple of 4 (group norm with 4 channels per group)")
    groups = args.vae_norm_groups
    if groups is not None and not (groups >= 1 and args.vae_base_dim % groups == 0):
        raise UserInputError(f"--vae_norm_groups {groups} must be >= 1 and divide --vae_base_dim {args.vae_base_dim}")


def train_vae(args, modules, state, device) -> dict:
    vae_loss = FAMILIES[args.family].vae_loss
    vae = modules["vae"].to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    if state.get("vae_optimizer"):
        optimizer.load_state_dict(state["vae_optimizer"])
    restart = restart_step(state, "vae")

    def step_fn(step: int) -> float:
        batch = vae_batch(args, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, args.vae_lr, step, args.vae_steps, restart)
        with autocast(device):
            parts = vae_loss(vae, batch.videos.to(device), args.kl_weight, batch.generator,
                             batch.pixel_weights(args, device), args.vae_edge_weight)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return parts["loss"].item()

    def checkpoint(step: int) -> None:
        state.update(step=step, vae=vae.state_dict(), vae_optimizer=optimizer.state_dict())
        save_state(args, state)

    probe_videos = vae_probe_batch(args).to(device)

    def probe() -> float:
        with torch.no_grad(), autocast(device):
            return vae_loss(vae, probe_videos, args.kl_weight, torch.Generator().manual_seed(PROBE_SEED))["loss"].item()

    summary = run_steps(args, "vae", state["step"], args.vae_steps, step_fn, checkpoint, probe)
    vae.eval()
    return summary


@torch.no_grad()
def vae_round_trip(args, vae, device) -> dict:
    """Encode -> decode held-out videos at the native size as sampling decodes them, then the quality
    analyser: the share whose reconstruction still shows its prompt bounds what the transformer can reach."""
    from delta_cache.metrics import fidelity
    from delta_cache.synthetic.analyse import ATTRIBUTES, check_video

    agree, attributes, psnrs, ssims = 0, dict.fromkeys(ATTRIBUTES, 0), [], []
    for index in range(args.vae_check_videos):
        video = make_video(index, "eval", num_frames=args.num_frames, height=args.height, width=args.width)
        frames = round_trip(args, vae, video.frames, device)
        check = check_video(frames, video.scene)
        agree += check.agrees
        for name in ATTRIBUTES:
            attributes[name] += check.matches[name]
        quality = fidelity(frames, video.frames)  # per-frame PSNR / SSIM, averaged over frames
        psnrs.append(min(quality.psnr, 100.0))  # an exact reconstruction's inf would not be valid JSON
        ssims.append(quality.ssim)
    count = max(1, args.vae_check_videos)
    return {"videos": args.vae_check_videos, "agreement": agree / count,
            "attributes": {k: v / count for k, v in attributes.items()}, "psnr": float(np.mean(psnrs)),
            "ssim": float(np.mean(ssims)), "flat_backgrounds": flat_background_errors(args, vae, device)}


@torch.no_grad()
def flat_background_errors(args, vae, device) -> dict[str, float]:
    """Per background palette colour: the RGB distance (0-255) between the colour and the mean of the round
    trip of a clip of only that colour. A VAE can lose absolute colour where a clip is flat (GroupNorm is
    blind to a common scale of its input); the first HunyuanVideo run's encoder gave black, gray and brown
    one latent. Such a VAE decodes every background alike, and no transformer can draw the prompt's."""
    from delta_cache.synthetic.prompts import BACKGROUND_COLOURS

    errors = {}
    for name, rgb in BACKGROUND_COLOURS.items():
        clip = np.broadcast_to(np.array(rgb, np.uint8), (args.num_frames, args.height, args.width, 3))
        mean_rgb = round_trip(args, vae, clip, device).reshape(-1, 3).mean(axis=0)
        errors[name] = round(float(np.linalg.norm(mean_rgb - np.array(rgb))), 1)
    return errors


@torch.no_grad()
def round_trip(args, vae, frames: np.ndarray, device) -> np.ndarray:
    """One uint8 video (F, H, W, 3) encoded and decoded as sampling decodes it, back as uint8 frames."""
    with autocast(device):
        decoded = vae.decode(FAMILIES[args.family].encode(vae, to_vae_input([frames]).to(device))).sample
    return ((decoded[0].float().clamp(-1, 1).permute(1, 2, 3, 0) + 1) * 127.5).round().byte().cpu().numpy()


def report_round_trip(args, vae, device, stage: str, step: int | None = None, **record) -> dict:
    """`vae_round_trip`, logged (at `step`, default the stage's last; `record` added) and printed."""
    check = vae_round_trip(args, vae, device)
    if step is None:
        step = args.vae_steps if stage == "vae" else args.decoder_steps
    log(args, {"stage": stage, "step": step, **record, "round_trip": check})
    tqdm.write(f"VAE round trip on {check['videos']} held-out videos: {check['agreement']:.0%} agree with their "
               f"prompt, PSNR {check['psnr']:.1f} dB, SSIM {check['ssim']:.3f}; per attribute " +
               ", ".join(f"{k} {v:.0%}" for k, v in check["attributes"].items()) +
               "; flat backgrounds' colour error (RGB distance) " +
               ", ".join(f"{k} {v:.0f}" for k, v in check["flat_backgrounds"].items()))
    return check


def train_decoder(args, modules, state, device) -> dict:
    """Fine-tune the post-quant conv and decoder on reconstructions of the frozen encoder's posterior means.

    The transformer was trained on (and samples) the encoder's posterior means, so the encoder must not move;
    the decoder may, and a VAE trained briefly as a whole mostly lacks decoding sharpness (rounded corners,
    drifting hues), which this stage buys back at the cost of an encoder forward pass.
    """
    family = FAMILIES[args.family]
    vae = modules["vae"].to(device).eval().requires_grad_(False)
    decoding = [vae.post_quant_conv, vae.decoder]
    parameters = [p for module in decoding for p in module.requires_grad_(True).parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.decoder_lr, weight_decay=0.0)
    if state.get("decoder_optimizer"):
        optimizer.load_state_dict(state["decoder_optimizer"])
    restart = restart_step(state, "decoder")

    def reconstruct(videos: torch.Tensor, pixel_weights: torch.Tensor | None = None,
                    edge_weight: float = 0.0) -> torch.Tensor:
        with torch.no_grad(), autocast(device):
            latents = family.encode(vae, videos)
        with autocast(device):
            return reconstruction_loss(family.decode(vae, latents), videos, pixel_weights, edge_weight)["loss"]

    def step_fn(step: int) -> float:
        batch = vae_batch(args, step, stage="decoder")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, args.decoder_lr, step, args.decoder_steps, restart)
        loss = reconstruct(batch.videos.to(device), batch.pixel_weights(args, device), args.vae_edge_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        return loss.item()

    def checkpoint(step: int) -> None:
        state.update(step=step, vae=vae.state_dict(), decoder_optimizer=optimizer.state_dict())
        save_state(args, state)

    probe_videos = vae_probe_batch(args).to(device)

    def probe() -> float:
        with torch.no_grad():
            return reconstruct(probe_videos).item()

    summary = run_steps(args, "decoder", state["step"], args.decoder_steps, step_fn, checkpoint, probe)
    vae.requires_grad_(False)
    return summary


def video_pool(args, step: int) -> int:
    """Which --num_videos training videos the transformer trains on at `step`: pool k is videos
    k*num_videos ... (k+1)*num_videos - 1 (--refresh_videos_every)."""
    return step // args.refresh_videos_every if args.refresh_videos_every else 0


def encode_training_videos(args, vae, device, desc: str = "latents", first: int = 0, count: int | None = None,
                           budget: TimeBudget | None = None) -> tuple[torch.Tensor, list[str]]:
    """Posterior means of `count` (default --num_videos) training videos from index `first`, and their prompts.

    `budget`: after the first batch, pause (the "latents" stage at step 0) if the rest would not fit in it.
    """
    family = FAMILIES[args.family]
    vae = vae.to(device).eval()
    latents, prompts = [], []
    end = first + (args.num_videos if count is None else count)
    started = time.perf_counter()
    for start in tqdm(range(first, end, 8), desc=desc, dynamic_ncols=True, disable=end - first <= 8):
        videos = [make_video(i, "train", num_frames=args.num_frames, height=args.height, width=args.width)
                  for i in range(start, min(start + 8, end))]
        with torch.no_grad(), autocast(device):
            latents.append(family.encode(vae, to_vae_input([v.frames for v in videos]).to(device)).float().cpu())
        prompts += [v.prompt for v in videos]
        if budget is not None and start == first:
            projected = (time.perf_counter() - started) / len(videos) * (end - first)
            if not budget.allows(projected):
                raise TrainingPaused("latents", 0)
    return torch.cat(latents), prompts


def encode_dataset(args, modules, device, budget: TimeBudget | None = None) -> dict:
    """Encode the transformer's training videos, fold their latent statistics into the VAE, re-normalise.

    `budget`: pause before the encoding if it would outlast the time budget (and maybe the machine)."""
    raw, prompts = encode_training_videos(args, modules["vae"], device, budget=budget)
    mean, std = channel_statistics(raw)
    FAMILIES[args.family].fold(modules["vae"], mean.to(device), std.to(device))
    # The fold is exact, so normalised latents are an affine map of the raw ones (no second encode).
    latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    return {"latents": latents.to(torch.float16), "prompts": prompts, "raw_mean": mean.tolist(),
            "raw_std": std.tolist(), "pool": 0}


def encode_normalised(args, vae, device, desc: str, first: int = 0, count: int | None = None):
    """Training latents of a folded VAE (the pipeline's normalisation of its posterior means), and prompts."""
    latents, prompts = encode_training_videos(args, vae, device, desc, first, count)
    return FAMILIES[args.family].normalise(vae, latents).to(torch.float16), prompts


def load_dataset(args, modules, state, device, pool: int = 0) -> dict:
    """The encoded training videos of `pool` (`video_pool`); encoded if the file is gone (it is too large to
    carry between machines) or holds another pool.

    The state's VAE is already folded, so the pipeline's normalisation of its posterior means gives the
    training latents (pool 0's as the latents stage made them, up to rounding); the raw statistics, which
    tiny_model.json records, come from the state.
    """
    path = args.work_dir / LATENTS_FILE
    if path.exists():
        dataset = torch.load(path, weights_only=False)
        if dataset.get("pool", 0) == pool:
            return dataset
    statistics = state.get("latent_statistics")
    if statistics is None:  # a state written before the statistics were kept in it
        raise UserInputError(f"{path} is missing and {args.work_dir / STATE_FILE} predates re-encoding: "
                             "restore the file or start the run again")
    first = pool * args.num_videos
    tqdm.write(f"encoding training videos {first}-{first + args.num_videos - 1} (pool {pool}) with the run's "
               "(folded) VAE")
    latents, prompts = encode_normalised(args, modules["vae"], device, f"latents (pool {pool})", first)
    dataset = {"latents": latents, "prompts": prompts, **statistics, "pool": pool}
    torch.save(dataset, path)
    return dataset


def train_dit(args, modules, state, device) -> dict:
    family = FAMILIES[args.family]
    encode_prompts, flow_matching_loss = family.encode_prompts, family.loss
    negative_prompt = family.negative_prompt
    transformer = modules["transformer"].to(device).train()
    if args.compile:
        transformer.compile_repeated_blocks()  # in place: parameter names (EMA, state) stay the same
    pipe = family.text_pipeline(modules, device, args)
    # With --train_text_encoder the tiny text encoders learn with the transformer (a frozen random encoder
    # mixes little context into its tokens, and two-object prompts need it to bind attributes to objects).
    text_names = [n for n in _TEXT_ENCODERS if n in modules] if args.train_text_encoder else []
    text_modules = {n: modules[n].to(device).train().requires_grad_(True) for n in text_names}
    trained = [transformer, *text_modules.values()]
    parameters = [p for module in trained for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01)
    ema = start_ema(transformer, device, state.get("ema"))
    text_ema = {name: start_ema(module, device, (state.get("text_ema") or {}).get(name))
                for name, module in text_modules.items()}
    if state.get("transformer_optimizer"):
        optimizer.load_state_dict(state["transformer_optimizer"])
    restart = restart_step(state, "dit")
    current = {"dataset": load_dataset(args, modules, state, device, video_pool(args, state["step"]))}

    with family.text_attention(transformer) as prepare_text:
        def step_fn(step: int) -> float:
            if current["dataset"]["pool"] != video_pool(args, step):  # --refresh_videos_every: the next videos
                current["dataset"] = load_dataset(args, modules, state, device, video_pool(args, step))
            dataset = current["dataset"]
            indices, batch_prompts, generator = dit_batch(args, step, dataset["prompts"], negative_prompt)
            latents = dataset["latents"][torch.from_numpy(indices)].float()
            noise = torch.randn(latents.shape, generator=generator)
            sigmas = sample_sigmas(len(indices), args.shift, generator)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, args.lr, step, args.dit_steps, restart)
            text = prepare_text(encode_prompts(pipe, batch_prompts, device, grad=bool(text_modules)))
            with autocast(device):
                loss = flow_matching_loss(transformer, latents.to(device), text, sigmas, noise.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            update_ema(ema, transformer, args.ema_decay, step)
            for name, module in text_modules.items():
                update_ema(text_ema[name], module, args.ema_decay, step)
            return loss.item()

        def checkpoint(step: int) -> None:
            state.update(step=step, transformer=transformer.state_dict(), ema=ema,
                         transformer_optimizer=optimizer.state_dict())
            if text_modules:  # a resume reloads them from here (load_or_start)
                state.update(text_ema=text_ema, text_encoders={
                    **(state.get("text_encoders") or {}), **{n: m.state_dict() for n, m in text_modules.items()}})
            save_state(args, state)

        # Fixed batch: the first training videos (whatever the pool) at evenly spread noise levels.
        count = min(8, args.num_videos)
        started = time.perf_counter()
        probe_latents, probe_prompts = encode_normalised(args, modules["vae"], device, "probe", 0, count)
        probe_latents = probe_latents.float()
        seconds_per_video = (time.perf_counter() - started) / count

        def pause_before(step: int) -> bool:
            """Pause before a new pool whose encoding would not fit in the time budget (it is encoded first
            thing after the resume instead; an hour-long step past the budget could outlast the machine)."""
            return (video_pool(args, step) != current["dataset"]["pool"]
                    and not args.time_budget.allows(seconds_per_video * args.num_videos))
        probe_generator = torch.Generator().manual_seed(PROBE_SEED)
        probe_noise = torch.randn(probe_latents.shape, generator=probe_generator)
        probe_sigmas = shift_sigmas((torch.arange(count) + 0.5) / count, args.shift)

        def probe() -> float:
            with torch.no_grad():
                text = prepare_text(encode_prompts(pipe, probe_prompts, device))
            with torch.no_grad(), autocast(device):
                return flow_matching_loss(transformer, probe_latents.to(device), text, probe_sigmas,
                                          probe_noise.to(device)).item()

        summary = run_steps(args, "dit", state["step"], args.dit_steps, step_fn, checkpoint, probe, pause_before)
    transformer.load_state_dict(ema, strict=False)  # parameters only (rope tables are buffers)
    transformer.eval()
    for name, module in text_modules.items():
        module.load_state_dict(text_ema[name], strict=False)
        module.eval().requires_grad_(False)
    return summary


# --- main ------------------------------------------------------------------------------------------

def load_initial_weights(args, modules) -> None:
    """Copy the trained weights of `--init_from`'s `--init_components` (loaded by the front ends' loader, in
    fp32) into `modules`.

    Tokenizers stay the freshly built ones: they are a pure function of the grammar, as in the checkpoint.
    """
    loaded = FAMILIES[args.family].load(args.init_from)
    for name in args.init_components:
        try:
            modules[name].load_state_dict(getattr(loaded, name).state_dict())
        except RuntimeError:
            raise UserInputError(f"--init_from {args.init_from}: its {name} does not fit the model flags (shapes or "
                                 "block counts differ; leave the shape flags out to inherit them)") from None


def warn_if_narrow(transformer) -> None:
    """Warn when the transformer is narrower than one output token (latent channels x patch volume, 64 here).

    The final projection then maps `width` numbers to more outputs, so every predicted velocity lies in a
    `width`-dimensional subspace: the other directions of the starting noise are never removed, and the
    samples keep them at full strength (measured on the width-48 previews: unit variance there, against
    0.1-0.16 in real latents; docs/tiny-models.md). The flow-matching loss cannot go below
    (outputs - width) / outputs, 0.25 at width 48. Not an error: smoke tests train narrow models on purpose.
    """
    width, outputs = transformer.proj_out.in_features, transformer.proj_out.out_features
    if width < outputs:
        tqdm.write(f"warning: transformer width {width} (--num_heads x --head_dim) is below the {outputs} values of "
                   f"an output token, so {outputs - width} of them can never be written: samples keep that part of "
                   f"the starting noise. Use a width of at least {outputs} for a model meant to draw.")


_TRAINED_MODULES = ("vae", "transformer")
_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def load_or_start(args, modules) -> dict:
    if not args.resume:
        state = {"stage": "vae", "step": 0, "args": vars(args).copy(), "summaries": {}}
        if args.init_from is not None:
            load_initial_weights(args, modules)
            # The new weights depend on the initial checkpoint's recipe too: keep it for tiny_model.json.
            state["initial_recipe"] = json.loads((args.init_from / INFO_FILE).read_text()).get("recipe")
            # A resumed run must start from these weights too, not from the seed's fresh ones: every module
            # goes into the state (the transformer and text encoders are not saved again before their stage).
            state.update({name: modules[name].state_dict() for name in _TRAINED_MODULES if name in modules})
            state["text_encoders"] = {name: modules[name].state_dict() for name in _TEXT_ENCODERS if name in modules}
        return state
    state = torch.load(args.work_dir / STATE_FILE, map_location="cpu", weights_only=False)
    changed = fixed_args_changed(state, args)
    if changed:
        raise UserInputError(f"--resume: {', '.join(changed)} differ from the run in {args.work_dir}")
    state["args"].update({k: getattr(args, k) for k in _FIXED_FROM_LATENTS})
    restore_weights(state, modules)
    return state


def fixed_args_changed(state: dict, args) -> list[str]:
    """The flags that shape the models or data and differ between `args` and the run in `state` (a resume
    must not change them)."""
    fixed = [k for k in _FIXED_ARGS if state["stage"] != "vae" or k not in _FIXED_FROM_LATENTS]
    return [f"--{k}" for k in fixed if state["args"].get(k, _FIXED_ARG_DEFAULTS.get(k)) != getattr(args, k)]


def restore_weights(state: dict, modules: dict) -> None:
    """The weights a state holds: VAE and transformer as last saved, and the text encoders (trained ones, or
    a warm start's frozen ones)."""
    for name in _TRAINED_MODULES:
        if state.get(name):
            modules[name].load_state_dict(state[name])
    for name, weights in (state.get("text_encoders") or {}).items():
        modules[name].load_state_dict(weights)


def run_stages(args, modules, state, device) -> None:
    """The stages from the state's one to "done"; each ends with the state saved (the budget pauses there)."""
    first_stage = state["stage"]
    if state["stage"] == "vae":
        state["summaries"]["vae"] = train_vae(args, modules, state, device)
        if args.vae_check_videos:
            check = state["summaries"]["vae"]["round_trip"] = report_round_trip(args, modules["vae"], device, "vae")
            if check["agreement"] < args.min_vae_agreement:
                save_state(args, state)  # stage "vae" at its last step: a resume with more steps continues
                raise UserInputError(f"VAE round trip agrees on {check['agreement']:.0%} < --min_vae_agreement "
                                     f"{args.min_vae_agreement:.0%}: train the VAE longer (--resume with a larger "
                                     "--vae_steps) before the transformer")
        state.update(stage="latents", step=0, vae=modules["vae"].state_dict(), vae_optimizer=None)
        save_state(args, state)
        args.time_budget.check("latents", 0)
    if state["stage"] == "latents":
        # A run that resumes here encodes whatever the budget (it must make progress); one that got here
        # from its VAE stage may pause first instead of overrunning.
        dataset = encode_dataset(args, modules, device, args.time_budget if first_stage != "latents" else None)
        torch.save(dataset, args.work_dir / LATENTS_FILE)
        state.update(stage="dit", step=0, vae=modules["vae"].state_dict(),  # the folded VAE
                     latent_statistics={k: dataset[k] for k in ("raw_mean", "raw_std")})
        save_state(args, state)
        args.time_budget.check("dit", 0)
    if state["stage"] == "dit":
        state["summaries"]["dit"] = train_dit(args, modules, state, device)
        state.update(stage="decoder", step=0, transformer=modules["transformer"].state_dict(),
                     transformer_optimizer=None)
        if args.train_text_encoder:  # their EMA weights, which a resume of the finished run reloads
            state["text_encoders"] = {n: modules[n].state_dict() for n in _TEXT_ENCODERS if n in modules}
        save_state(args, state)
        if args.decoder_steps:  # (without a decoder stage only the save is left: no pause for it)
            args.time_budget.check("decoder", 0)
    # From here on load_or_start has put the transformer's EMA weights (state["transformer"]) in place.
    if state["stage"] == "decoder":
        if args.decoder_steps:
            state["summaries"]["decoder"] = train_decoder(args, modules, state, device)
            if args.vae_check_videos:
                state["summaries"]["decoder"]["round_trip"] = report_round_trip(args, modules["vae"], device,
                                                                                "decoder")
        state.update(stage="done", step=0, vae=modules["vae"].state_dict(), decoder_optimizer=None)
        save_state(args, state)


def main(argv=None) -> dict:
    """Run (or resume) the stages and write the checkpoint; returns the per-stage summaries."""
    args = parse_args(argv)
    if args.export_state:
        set_offline()
        return export_state(args.work_dir, args.out)
    if args.pack_state:
        packed = pack_state(args.work_dir, args.pack_state)
        tqdm.write(f"packed {args.work_dir} at {packed['stage']} step {packed['step']} into {args.pack_state} "
                   f"({packed['bytes'] / 2**20:.1f} MiB)")
        return packed
    if args.check_vae_state:
        set_offline()
        if args.threads:
            torch.set_num_threads(args.threads)
        return check_vae_state(args.work_dir, args.vae_check_videos, torch.device(args.device))
    if args.unpack_state:
        unpacked = unpack_state(args.unpack_state, args.work_dir)
        tqdm.write(f"unpacked {args.unpack_state} into {args.work_dir} at {unpacked['stage']} step "
                   f"{unpacked['step']}; continue with --resume (a warm restart)")
        return unpacked
    validate(args)
    set_offline()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    family = FAMILIES[args.family]
    modules = family.build(args, init_seed(args))
    warn_if_narrow(modules["transformer"])
    state = load_or_start(args, modules)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:  # a log without a state is a stale one: the new run's summaries read the log
        (args.work_dir / LOG_FILE).unlink(missing_ok=True)

    args.time_budget = TimeBudget(args.stop_after_minutes)  # set after the state copied the flags
    try:
        run_stages(args, modules, state, device)
    except TrainingPaused as paused:
        tqdm.write(f"--stop_after_minutes {args.stop_after_minutes:g}: stopped at {paused.stage} step "
                   f"{paused.step}; the state is in {args.work_dir}, run again with --resume to continue")
        return {"paused": {"stage": paused.stage, "step": paused.step}}
    # (a state from before the statistics were kept in it: read them from the latents file)
    statistics = state.get("latent_statistics") or load_dataset(args, modules, state, device)
    write_checkpoint(args, modules, state, statistics)
    print(json.dumps({"out": str(args.out), **state["summaries"]}, indent=2))
    return state["summaries"]


_NOT_RECIPE = ("out", "work_dir", "resume", "threads", "stop_after_minutes", "time_budget", "export_state",
               "pack_state", "unpack_state", "check_vae_state")


def write_checkpoint(args, modules, state, statistics: dict, extra: dict | None = None) -> None:
    """The family's upstream layout in --out, plus tiny_model.json (native size, shift, folded statistics,
    recipe, stage summaries, and `extra`)."""
    family = FAMILIES[args.family]
    info = {
        "family": args.family,
        "native_size": {"width": args.width, "height": args.height, "num_frames": args.num_frames},
        "sample_shift": args.shift,
        "prompt_grammar": "delta_cache.synthetic.prompts",
        "latent_statistics_folded_into_vae": {"mean": statistics["raw_mean"], "std": statistics["raw_std"]},
        **family.sampling_info(modules),
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in _NOT_RECIPE},
        **({"initial_recipe": state["initial_recipe"]} if state.get("initial_recipe") else {}),
        "summaries": state["summaries"],
        **(extra or {}),
    }
    family.save(modules, args.out)
    (args.out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_state(work_dir: Path, flag: str) -> dict:
    """The training state in `work_dir`, for the utilities that read a run without training it."""
    if not (work_dir / STATE_FILE).exists():
        raise UserInputError(f"{flag}: no training state in {work_dir}")
    return torch.load(work_dir / STATE_FILE, map_location="cpu", weights_only=False)


def state_modules(state: dict, work_dir: Path, **overrides) -> tuple[argparse.Namespace, dict]:
    """The run's flags (as the state recorded them, with `overrides`) and its modules, holding the state's
    weights."""
    run = argparse.Namespace(**{**_FIXED_ARG_DEFAULTS, **state["args"], "work_dir": work_dir, **overrides})
    fill_family_defaults(run)
    modules = FAMILIES[run.family].build(run, init_seed(run))
    restore_weights(state, modules)
    return run, modules


def check_vae_state(work_dir: Path, videos: int, device: torch.device) -> dict:
    """--check_vae_state: the round-trip check of the VAE a training state holds now, logged as stage
    "vae_check" at the state's step, with the state's stage as "state_stage"."""
    if videos < 1:
        raise UserInputError(f"--check_vae_state needs --vae_check_videos >= 1, got {videos}")
    state = read_state(work_dir, "--check_vae_state")
    run, modules = state_modules(state, work_dir, vae_check_videos=videos)
    tqdm.write(f"{work_dir}: {state['stage']} stage, step {state['step']}")
    check = report_round_trip(run, modules["vae"].to(device).eval(), device, "vae_check", step=state["step"],
                              state_stage=state["stage"])
    return {"stage": state["stage"], "step": state["step"], **check}


def export_state(work_dir: Path, out: Path) -> dict:
    """--export_state: the weights of the training state in `work_dir` as a checkpoint in `out`.

    The transformer's EMA weights (what the run would save if it ended now), the folded VAE, and the text
    encoders (their EMA when trained); tiny_model.json records the run's recipe and `snapshot` (stage, step).
    """
    require_empty_out(out)
    state = read_state(work_dir, "--export_state")
    stage, step = state["stage"], state["step"]
    if stage in ("vae", "latents") or not state.get("latent_statistics"):
        raise UserInputError(f"--export_state: the run in {work_dir} is at its {stage} stage (step {step}); a "
                             "checkpoint needs the folded VAE that the transformer stage starts with")
    run, modules = state_modules(state, work_dir, out=out)
    # In the transformer stage the state holds the raw weights and, from its first checkpoint on, their EMA
    # (parameters only), which is what the run would save; after it, the EMA weights themselves.
    if stage == "dit":
        if state.get("ema"):
            modules["transformer"].load_state_dict(state["ema"], strict=False)
        for name, weights in (state.get("text_ema") or {}).items():
            modules[name].load_state_dict(weights, strict=False)
    write_checkpoint(run, modules, state, state["latent_statistics"], extra={"snapshot": {"stage": stage, "step": step}})
    tqdm.write(f"exported {work_dir} at {stage} step {step} to {out}")
    return {"out": str(out), "snapshot": {"stage": stage, "step": step}}


if __name__ == "__main__":
    run_cli(main)
