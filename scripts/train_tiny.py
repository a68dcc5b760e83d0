#!/usr/bin/env python
"""Train a tiny text-to-video model on synthetic moving shapes and save it in the upstream checkpoint layout.

    python scripts/train_tiny.py --family wan --out ckpts/tiny-wan-trained --seed 0 --device cuda

Stages (the state after each checkpoint is in --work_dir; --resume continues from it, reproducibly: every
step's data and noise derive from (seed, stage, step) only):
  1. vae      AutoencoderKLWan on random crops of synthetic training videos (L1 + MSE + small KL).
  2. latents  encode --num_videos training videos at the native size; fold the per-channel latent statistics
              into the VAE (see delta_cache/training/flow_matching.py) so the default constants normalise them.
  3. dit      WanTransformer3DModel (40 blocks) with flow matching on those latents; text from a frozen tiny
              UMT5 whose tokenizer knows every grammar word; CFG dropout; EMA of the weights.
  4. save     EMA weights in fp16, upstream Wan2.1 layout, into --out (loads with Wan2.1/generate.py).

Only --family wan is implemented; a hunyuan_video family would add its own build/encode/save functions to
FAMILIES with the same stage loop. See docs/tiny-models.md for the recipe and timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from delta_cache.cli import run_cli, set_offline  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.synthetic.prompts import vocabulary  # noqa: E402
from delta_cache.synthetic.videos import make_video  # noqa: E402
from delta_cache.training import (  # noqa: E402
    channel_statistics,
    flow_matching_loss,
    fold_latent_statistics,
    sample_sigmas,
    shift_sigmas,
    vae_loss,
)

STATE_FILE = "state.pt"
LATENTS_FILE = "latents.pt"
LOG_FILE = "log.jsonl"
INFO_FILE = "tiny_model.json"  # written next to the checkpoint: native size, prompt grammar, recipe
STAGES = ("vae", "latents", "dit", "done")
_STAGE_SEED = {"vae": 1, "dit": 2, "init": 3}
# Arguments that shape the models or the data: a resumed run must use the same values.
_FIXED_ARGS = ("family", "seed", "num_frames", "height", "width", "num_layers", "num_heads", "head_dim", "ffn_dim",
               "text_dim", "vae_base_dim", "num_videos")
# Upstream prompts the sampler may use for the unconditional branch; CFG dropout trains on both.
EMPTY_PROMPT = ""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="wan", choices=["wan", "hunyuan_video"], help="model family")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write (must be empty or new)")
    p.add_argument("--work_dir", type=Path, help="training state and latents (default: <out>.work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from the state in --work_dir")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    # stages
    p.add_argument("--vae_steps", type=int, default=4000)
    p.add_argument("--dit_steps", type=int, default=30000)
    p.add_argument("--batch_size", type=int, default=32, help="transformer batch size")
    p.add_argument("--vae_batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="transformer learning rate (AdamW)")
    p.add_argument("--vae_lr", type=float, default=5e-4)
    p.add_argument("--warmup_steps", type=int, default=500, help="linear learning-rate warm-up (both stages)")
    p.add_argument("--num_videos", type=int, default=20000, help="training videos encoded for the transformer")
    p.add_argument("--checkpoint_every", type=int, default=1000, help="steps between saved training states")
    # data
    p.add_argument("--num_frames", type=int, default=17, help="native frames (4n+1)")
    p.add_argument("--height", type=int, default=128, help="native height (multiple of 16)")
    p.add_argument("--width", type=int, default=128, help="native width (multiple of 16)")
    p.add_argument("--vae_frames", type=int, default=9, help="frames per VAE training clip (4n+1)")
    p.add_argument("--vae_crop", type=int, default=64, help="square crop for VAE training (0: whole frame)")
    # models
    p.add_argument("--num_layers", type=int, default=40)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--head_dim", type=int, default=24)
    p.add_argument("--ffn_dim", type=int, default=384)
    p.add_argument("--text_dim", type=int, default=32, help="UMT5 d_model (= the transformer's text_dim)")
    p.add_argument("--vae_base_dim", type=int, default=12)
    # objective
    p.add_argument("--shift", type=float, default=5.0, help="flow shift of the training sigmas (sampler default 5)")
    p.add_argument("--cfg_dropout", type=float, default=0.1, help="share of unconditional samples")
    p.add_argument("--kl_weight", type=float, default=1e-4)
    p.add_argument("--ema_decay", type=float, default=0.999)
    args = p.parse_args(argv)
    args.work_dir = args.work_dir or args.out.with_name(args.out.name + ".work")
    return args


def validate(args) -> None:
    if args.family != "wan":
        raise UserInputError(f"--family {args.family}: not implemented yet (only wan)")
    if args.num_frames < 1 or (args.num_frames - 1) % 4 or args.vae_frames < 1 or (args.vae_frames - 1) % 4:
        raise UserInputError("--num_frames and --vae_frames must be 4n+1")
    if args.vae_frames > args.num_frames:
        raise UserInputError("--vae_frames must not exceed --num_frames")
    if args.height % 16 or args.width % 16 or args.vae_crop % 16 or args.vae_crop > min(args.height, args.width):
        raise UserInputError("--height, --width and --vae_crop must be multiples of 16, the crop within the frame")
    if args.head_dim % 2 or args.head_dim < 6:
        raise UserInputError("--head_dim must be even and >= 6 (rope splits it into t/h/w parts)")
    if min(args.batch_size, args.vae_batch_size, args.num_videos, args.checkpoint_every) < 1 or \
            min(args.vae_steps, args.dit_steps) < 0:
        raise UserInputError("batch sizes, --num_videos and --checkpoint_every must be >= 1, steps >= 0")
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        raise UserInputError(f"--device {args.device}: expected cpu, or cuda on a machine with a GPU")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserInputError(f"--out {args.out} exists and is not empty")
    if (args.work_dir / STATE_FILE).exists() and not args.resume:
        raise UserInputError(f"{args.work_dir} holds a training state: pass --resume, or another --work_dir")
    if args.resume and not (args.work_dir / STATE_FILE).exists():
        raise UserInputError(f"--resume: no training state in {args.work_dir}")


# --- the Wan family --------------------------------------------------------------------------------

def build_tokenizer():
    """T5-style unigram tokenizer: each grammar word is one piece; other text falls back to characters."""
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [("▁" + w, -2.0) for w in vocabulary()] + [("▁", -3.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0)


def build_wan_modules(args) -> dict:
    """Fresh modules for `args.seed`: the upstream-compatible shapes of delta_cache/models/wan/tiny.py."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed * 1000 + _STAGE_SEED["init"])
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=args.text_dim, d_kv=8, d_ff=2 * args.text_dim, num_layers=2,
            num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu", dropout_rate=0.0)).eval().requires_grad_(False)
        # The diffusers VAE converter hard-codes 4 levels with 2 residual blocks: only the width shrinks.
        vae = AutoencoderKLWan(base_dim=args.vae_base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=args.num_heads, attention_head_dim=args.head_dim,
            in_channels=16, out_channels=16, text_dim=args.text_dim, freq_dim=256, ffn_dim=args.ffn_dim,
            num_layers=args.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            rope_max_seq_len=1024)
        # Every block starts as the identity and the output as zero (as in DiT's adaLN-Zero): a deep, narrow
        # stack then trains stably from the first step.
        for block in transformer.blocks:
            for layer in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
        torch.nn.init.zeros_(transformer.proj_out.weight)
        torch.nn.init.zeros_(transformer.proj_out.bias)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer)


def text_pipeline(modules: dict, device: torch.device):
    """A WanPipeline without transformer, for prompt encoding exactly as sampling does it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    modules["text_encoder"].to(device)
    return WanPipeline(tokenizer=modules["tokenizer"], text_encoder=modules["text_encoder"], vae=modules["vae"],
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))


def encode_prompts(pipe, prompts: list[str], device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512,
                                       device=device, dtype=torch.float32)
    return embeds


def save_wan(modules: dict, out: Path, info: dict) -> None:
    """EMA weights in fp16 (the loaders cast to the run dtype), upstream layout, plus tiny_model.json."""
    from delta_cache.models.wan import tiny

    half = {name: to_half(modules[name].to("cpu")) for name in ("transformer", "vae", "text_encoder")}
    out.mkdir(parents=True, exist_ok=True)
    tiny.write_upstream(out, {**half, "tokenizer": modules["tokenizer"]}, shards=1)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def to_half(module: torch.nn.Module) -> torch.nn.Module:
    """fp16 in place, except the modules the model class keeps in fp32 (norms, modulation, time embedding)."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, param in module.named_parameters():
        if param.is_floating_point() and not keep & set(name.split(".")):
            param.data = param.data.to(torch.float16)
    return module


FAMILIES = {"wan": dict(build=build_wan_modules, save=save_wan)}


# --- data ------------------------------------------------------------------------------------------

def to_tensor(frames_list: list[np.ndarray]) -> torch.Tensor:
    """uint8 (F, H, W, 3) videos -> (B, 3, F, H, W) float in [-1, 1]."""
    videos = torch.from_numpy(np.stack(frames_list)).permute(0, 4, 1, 2, 3)
    return videos.float() / 127.5 - 1.0


def step_rng(args, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([args.seed, _STAGE_SEED[stage], step])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def vae_batch(args, step: int) -> tuple[torch.Tensor, torch.Generator]:
    """Random crops of random training videos (any index: the VAE never sees the transformer's split)."""
    rng = step_rng(args, "vae", step)
    crop = args.vae_crop or min(args.height, args.width)
    clips = []
    for index in rng.integers(0, 10**9, size=args.vae_batch_size):
        frames = make_video(int(index), "train", num_frames=args.num_frames, height=args.height,
                            width=args.width).frames
        t0 = int(rng.integers(0, args.num_frames - args.vae_frames + 1))
        y0 = int(rng.integers(0, args.height - crop + 1))
        x0 = int(rng.integers(0, args.width - crop + 1))
        clips.append(frames[t0:t0 + args.vae_frames, y0:y0 + crop, x0:x0 + crop])
    return to_tensor(clips), torch_generator(rng)


def vae_probe_batch(args) -> torch.Tensor:
    """A fixed batch for the VAE's progress: centre crops of the first evaluation videos."""
    crop = args.vae_crop or min(args.height, args.width)
    y0, x0 = (args.height - crop) // 2, (args.width - crop) // 2
    return to_tensor([
        make_video(i, "eval", num_frames=args.num_frames, height=args.height, width=args.width)
        .frames[:args.vae_frames, y0:y0 + crop, x0:x0 + crop]
        for i in range(4)
    ])


def dit_batch(args, step: int, prompts: list[str],
              negative_prompt: str) -> tuple[np.ndarray, list[str], torch.Generator]:
    """Dataset indices, prompts after CFG dropout (half empty, half the sampler's negative prompt), noise rng."""
    rng = step_rng(args, "dit", step)
    indices = rng.integers(0, len(prompts), size=args.batch_size)
    dropped = rng.random(args.batch_size) < args.cfg_dropout
    use_negative = rng.random(args.batch_size) < 0.5
    batch_prompts = [
        (negative_prompt if neg else EMPTY_PROMPT) if drop else prompts[i]
        for i, drop, neg in zip(indices, dropped, use_negative)
    ]
    return indices, batch_prompts, torch_generator(rng)


# --- training loop pieces --------------------------------------------------------------------------

def learning_rate(base: float, step: int, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def update_ema(ema: dict, model: torch.nn.Module, decay: float, step: int) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # short runs still move the average
    with torch.no_grad():
        for name, param in model.named_parameters():
            ema[name].lerp_(param.detach().float(), 1 - decay)


def save_state(args, state: dict) -> None:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tmp = args.work_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(args.work_dir / STATE_FILE)


def log(args, record: dict) -> None:
    with open(args.work_dir / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_steps(args, stage: str, first_step: int, total: int, step_fn, checkpoint_fn, probe_fn) -> dict:
    """The shared loop: tqdm with the running loss, periodic checkpoints, a per-step log; returns a summary.

    The per-step loss is noisy (it depends on the random noise level and batch), so `probe_fn`, the loss on
    one fixed batch, is also measured at the start and at every checkpoint.
    """
    losses, step_seconds = [], 0.0
    probes = [probe_fn()]
    log(args, {"stage": stage, "step": first_step, "fixed_batch_loss": probes[0]})
    bar = tqdm(range(first_step, total), desc=stage, initial=first_step, total=total, dynamic_ncols=True)
    for step in bar:
        start = time.perf_counter()
        loss = step_fn(step)
        step_seconds += time.perf_counter() - start
        losses.append(loss)
        log(args, {"stage": stage, "step": step, "loss": loss})
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", fixed=f"{probes[-1]:.4f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == total:
            probes.append(probe_fn())
            log(args, {"stage": stage, "step": step + 1, "fixed_batch_loss": probes[-1]})
            checkpoint_fn(step + 1)
    n = max(1, min(10, len(losses) // 4))
    return {"steps": len(losses), "seconds_per_step": step_seconds / max(1, len(losses)),
            "loss_first": float(np.mean(losses[:n])) if losses else None,
            "loss_last": float(np.mean(losses[-n:])) if losses else None,
            "fixed_batch_loss_start": probes[0], "fixed_batch_loss_end": probes[-1]}


def train_vae(args, modules, state, device) -> dict:
    vae = modules["vae"].to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    if state.get("vae_optimizer"):
        optimizer.load_state_dict(state["vae_optimizer"])

    def step_fn(step: int) -> float:
        videos, generator = vae_batch(args, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.vae_lr, step, args.warmup_steps)
        with autocast(device):
            parts = vae_loss(vae, videos.to(device), args.kl_weight, generator)
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
            return vae_loss(vae, probe_videos, args.kl_weight, torch.Generator().manual_seed(args.seed))["loss"].item()

    summary = run_steps(args, "vae", state["step"], args.vae_steps, step_fn, checkpoint, probe)
    vae.eval()
    return summary


def encode_dataset(args, modules, device) -> dict:
    """Encode the transformer's training videos, fold their latent statistics into the VAE, re-normalise."""
    vae = modules["vae"].to(device).eval()
    raw, prompts = [], []
    for start in tqdm(range(0, args.num_videos, 8), desc="latents", dynamic_ncols=True):
        videos = [make_video(i, "train", num_frames=args.num_frames, height=args.height, width=args.width)
                  for i in range(start, min(start + 8, args.num_videos))]
        with torch.no_grad(), autocast(device):
            raw.append(vae.encode(to_tensor([v.frames for v in videos]).to(device)).latent_dist.mean.float().cpu())
        prompts += [v.prompt for v in videos]
    raw = torch.cat(raw)
    mean, std = channel_statistics(raw)
    fold_latent_statistics(vae, mean.to(device), std.to(device))
    # The fold is exact, so normalised latents are an affine map of the raw ones (no second encode).
    latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    return {"latents": latents.to(torch.float16), "prompts": prompts, "raw_mean": mean.tolist(),
            "raw_std": std.tolist()}


def train_dit(args, modules, state, dataset, device) -> dict:
    from delta_cache.models.wan.tasks import NEGATIVE_PROMPT

    transformer = modules["transformer"].to(device).train()
    pipe = text_pipeline(modules, device)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    ema = state.get("ema") or {n: p.detach().float().clone() for n, p in transformer.named_parameters()}
    ema = {n: t.to(device) for n, t in ema.items()}
    if state.get("transformer_optimizer"):
        optimizer.load_state_dict(state["transformer_optimizer"])
    latents_all, prompts = dataset["latents"], dataset["prompts"]

    def step_fn(step: int) -> float:
        indices, batch_prompts, generator = dit_batch(args, step, prompts, NEGATIVE_PROMPT)
        latents = latents_all[torch.from_numpy(indices)].float()
        noise = torch.randn(latents.shape, generator=generator)
        sigmas = sample_sigmas(len(indices), args.shift, generator)
        embeds = encode_prompts(pipe, batch_prompts, device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, step, args.warmup_steps)
        with autocast(device):
            loss = flow_matching_loss(transformer, latents.to(device), embeds, sigmas, noise.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, transformer, args.ema_decay, step)
        return loss.item()

    def checkpoint(step: int) -> None:
        state.update(step=step, transformer=transformer.state_dict(), ema=ema,
                     transformer_optimizer=optimizer.state_dict())
        save_state(args, state)

    # Fixed batch: the first training latents at evenly spread noise levels.
    count = min(8, len(prompts))
    probe_generator = torch.Generator().manual_seed(args.seed)
    probe_latents = latents_all[:count].float()
    probe_noise = torch.randn(probe_latents.shape, generator=probe_generator)
    probe_sigmas = shift_sigmas((torch.arange(count) + 0.5) / count, args.shift)
    probe_embeds = encode_prompts(pipe, prompts[:count], device)

    def probe() -> float:
        with torch.no_grad(), autocast(device):
            return flow_matching_loss(transformer, probe_latents.to(device), probe_embeds, probe_sigmas,
                                      probe_noise.to(device)).item()

    summary = run_steps(args, "dit", state["step"], args.dit_steps, step_fn, checkpoint, probe)
    transformer.load_state_dict(ema, strict=False)  # parameters only (rope tables are buffers)
    transformer.eval()
    return summary


# --- main ------------------------------------------------------------------------------------------

def load_or_start(args, modules) -> dict:
    if not args.resume:
        return {"stage": "vae", "step": 0, "args": vars(args).copy(), "summaries": {}}
    state = torch.load(args.work_dir / STATE_FILE, map_location="cpu", weights_only=False)
    changed = [f"--{k}" for k in _FIXED_ARGS if state["args"].get(k) != getattr(args, k)]
    if changed:
        raise UserInputError(f"--resume: {', '.join(changed)} differ from the run in {args.work_dir}")
    for name in ("vae", "transformer"):
        if state.get(name):
            modules[name].load_state_dict(state[name])
    return state


def main(argv=None) -> dict:
    """Run (or resume) the stages and write the checkpoint; returns the per-stage summaries."""
    args = parse_args(argv)
    validate(args)
    set_offline()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    family = FAMILIES[args.family]
    modules = family["build"](args)
    state = load_or_start(args, modules)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    if state["stage"] == "vae":
        state["summaries"]["vae"] = train_vae(args, modules, state, device)
        state.update(stage="latents", step=0, vae=modules["vae"].state_dict(), vae_optimizer=None)
        save_state(args, state)
    if state["stage"] == "latents":
        dataset = encode_dataset(args, modules, device)
        torch.save(dataset, args.work_dir / LATENTS_FILE)
        state.update(stage="dit", step=0, vae=modules["vae"].state_dict())  # the folded VAE
        save_state(args, state)
    dataset = torch.load(args.work_dir / LATENTS_FILE, weights_only=False)
    if state["stage"] == "dit":
        state["summaries"]["dit"] = train_dit(args, modules, state, dataset, device)
        state.update(stage="done", step=0, transformer=modules["transformer"].state_dict(),
                     transformer_optimizer=None)
        save_state(args, state)
    elif state["stage"] == "done":  # the saved transformer weights are already the EMA ones
        modules["transformer"].load_state_dict(state["transformer"])

    info = {
        "family": args.family,
        "native_size": {"width": args.width, "height": args.height, "num_frames": args.num_frames},
        "sample_shift": args.shift,
        "prompt_grammar": "delta_cache.synthetic.prompts",
        "latent_statistics_folded_into_vae": {"mean": dataset["raw_mean"], "std": dataset["raw_std"]},
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("out", "work_dir", "resume", "threads")},
        "summaries": state["summaries"],
    }
    family["save"](modules, args.out, info)
    print(json.dumps({"out": str(args.out), **state["summaries"]}, indent=2))
    return state["summaries"]


if __name__ == "__main__":
    run_cli(main)
