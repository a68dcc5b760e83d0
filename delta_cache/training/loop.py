"""The pieces every stage of `scripts/train_tiny.py` shares: learning-rate schedule, EMA, the state and log
files, the wall-clock budget, and the step loop with its progress bar.

`args` is the script's flags; what is read here: work_dir, checkpoint_every, warmup_steps, lr_decay,
min_lr_ratio and time_budget (a `TimeBudget`).
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import torch
from tqdm import tqdm

STATE_FILE = "state.pt"  # in --work_dir: everything a resume needs
LOG_FILE = "log.jsonl"  # in --work_dir: every step's loss and the fixed-batch losses
LATENTS_FILE = "latents.pt"  # in --work_dir: the encoded training videos of the transformer stage
STAGES = ("vae", "latents", "dit", "decoder", "done")  # in the order a run goes through them


def learning_rate(args, base: float, step: int, total: int, restarted_at: int | None = None) -> float:
    """Linear warm-up, then (cosine) a decay to min_lr_ratio x base at the stage's last step.

    `restarted_at`: the step where the stage went on with a fresh optimizer (an unpacked state, `carry.py`):
    from there the rate warms up again over --warmup_steps towards the schedule's own rate (within the first
    warm-up, the two ramps multiply: slower, and harmless).
    """
    rate = base * min(1.0, (step + 1) / max(1, args.warmup_steps))
    if args.lr_decay == "cosine" and step >= args.warmup_steps:
        progress = min(1.0, (step - args.warmup_steps) / max(1, total - 1 - args.warmup_steps))
        rate *= args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + np.cos(np.pi * progress))
    if restarted_at is not None and step >= restarted_at:
        rate *= min(1.0, (step + 1 - restarted_at) / max(1, args.warmup_steps))
    return rate


def restart_step(state: dict, stage: str) -> int | None:
    """The step at which `stage` restarted without its optimizer's moments, if it did (see `learning_rate`)."""
    return (state.get("warm_restarts") or {}).get(stage)


def autocast(device: torch.device):
    """bf16 autocast on a GPU; fp32 on the CPU (where bf16 autocast measured slower at these sizes)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def start_ema(model: torch.nn.Module, device: torch.device, saved: dict | None = None) -> dict:
    """fp32 EMA weights on `device`: the saved ones of a resumed run, else a copy of the model's."""
    ema = saved or {n: p.detach().float().clone() for n, p in model.named_parameters()}
    return {n: t.to(device) for n, t in ema.items()}


def update_ema(ema: dict, model: torch.nn.Module, decay: float, step: int) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # short runs still move the average
    with torch.no_grad():
        for name, param in model.named_parameters():
            ema[name].lerp_(param.detach().float(), 1 - decay)


def save_state(args, state: dict) -> None:
    """Write the state atomically (an interruption leaves the previous one)."""
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tmp = args.work_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(args.work_dir / STATE_FILE)


class TrainingPaused(Exception):
    """--stop_after_minutes ran out: the state on disk is at (stage, step)."""

    def __init__(self, stage: str, step: int):
        super().__init__(f"{stage} step {step}")
        self.stage, self.step = stage, step


class TimeBudget:
    """Wall-clock budget of one invocation (--stop_after_minutes); None: unlimited."""

    def __init__(self, minutes: float | None):
        self.seconds = None if minutes is None else 60.0 * minutes
        self.started = time.monotonic()

    def spent(self) -> bool:
        return self.remaining() <= 0

    def remaining(self) -> float:
        """Seconds left (inf without a budget)."""
        return float("inf") if self.seconds is None else self.seconds - (time.monotonic() - self.started)

    def allows(self, estimated_seconds: float) -> bool:
        """Whether work estimated at this many seconds fits in what is left, with a 1.5x margin (the estimates
        come from a first batch, a rough guide)."""
        return self.remaining() >= 1.5 * estimated_seconds

    def check(self, stage: str, step: int) -> None:
        """Call where the state on disk is at (stage, step): pause there if the budget is spent."""
        if self.spent():
            raise TrainingPaused(stage, step)


def log(args, record: dict) -> None:
    with open(args.work_dir / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_steps(args, stage: str, first_step: int, total: int, step_fn, checkpoint_fn, probe_fn,
              pause_before=None) -> dict:
    """The shared loop: tqdm with the running loss, periodic checkpoints, a per-step log; returns a summary.

    The per-step loss is noisy (it depends on the random noise level and batch), so `probe_fn`, the loss on
    one fixed batch, is also measured at the start and at every checkpoint. `pause_before(step)`, if given,
    may pause the run before a step (after the first), e.g. one whose preparation would overrun the budget.
    """
    losses, step_seconds = [], 0.0
    probes = [probe_fn()]
    log(args, {"stage": stage, "step": first_step, "fixed_batch_loss": probes[0]})
    bar = tqdm(range(first_step, total), desc=stage, initial=first_step, total=total, dynamic_ncols=True)
    checkpointed = False
    for step in bar:
        if pause_before is not None and step > first_step and pause_before(step):
            if not checkpointed:
                checkpoint_fn(step)
            raise TrainingPaused(stage, step)
        start = time.perf_counter()
        loss = step_fn(step)
        step_seconds += time.perf_counter() - start
        losses.append(loss)
        log(args, {"stage": stage, "step": step, "loss": loss})
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", fixed=f"{probes[-1]:.4f}")
        checkpointed = (step + 1) % args.checkpoint_every == 0 or step + 1 == total
        if checkpointed:
            probes.append(probe_fn())
            log(args, {"stage": stage, "step": step + 1, "fixed_batch_loss": probes[-1]})
            checkpoint_fn(step + 1)
        if step + 1 < total and args.time_budget.spent():  # one reading: the state saved is the one reported
            if not checkpointed:
                checkpoint_fn(step + 1)
            raise TrainingPaused(stage, step + 1)
    # The summary covers the whole stage, also when this run resumed it: the log has every step.
    stage_losses, stage_probes = (list(by_step.values()) for by_step in stage_log(args, stage, total))
    n = max(1, min(10, len(stage_losses) // 4))
    return {"steps": len(stage_losses), "seconds_per_step": step_seconds / max(1, len(losses)),
            "loss_first": float(np.mean(stage_losses[:n])) if stage_losses else None,
            "loss_last": float(np.mean(stage_losses[-n:])) if stage_losses else None,
            "fixed_batch_loss_start": stage_probes[0] if stage_probes else None,
            "fixed_batch_loss_end": stage_probes[-1] if stage_probes else None}


def stage_log(args, stage: str, total: int) -> tuple[dict[int, float], dict[int, float]]:
    """A stage's per-step losses and fixed-batch losses from log.jsonl, by step in order; where a resumed
    run repeated the steps after its last checkpoint, its records (the ones the weights come from) win."""
    losses, probes = {}, {}
    with open(args.work_dir / LOG_FILE) as f:
        for record in map(json.loads, f):
            if record["stage"] == stage and record["step"] <= total:
                if "loss" in record:
                    losses[record["step"]] = record["loss"]
                elif "fixed_batch_loss" in record:
                    probes[record["step"]] = record["fixed_batch_loss"]
    return dict(sorted(losses.items())), dict(sorted(probes.items()))
