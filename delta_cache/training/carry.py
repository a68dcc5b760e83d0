"""Carrying a training run between machines that keep nothing: a packed state small enough to commit.

A full training state (`state.pt`) holds fp32 weights plus AdamW's two moments, 12 bytes a parameter: 25 MB
for a base-12 VAE, over 100 MB in the transformer stage. When every session starts on a fresh machine (as
ours do since 2026-12-01), the run has to travel in the repository, so `pack_state` keeps what a
continuation needs and little else:

- every fp32 tensor of the weights (VAE, transformer, its EMA, text encoders) in fp16: a rounding of
  ~5e-4 of each weight, smaller than one step's update at these learning rates;
- no optimizer moments: `unpack_state` records a warm restart at the packed step instead, and the stage's
  learning rate warms up again from there (`loop.learning_rate`'s `restarted_at`), so a fresh AdamW is not
  started at full rate;
- in the transformer stage, the raw weights of the transformer and of trained text encoders restart from
  their EMA (the weights the run would save): stored once, which halves the file (~15 MB at the defaults);
- the log (gzip-compressed), from which the stage summaries are read;
- not the latents file (hundreds of MB): a transformer stage re-encodes its videos on resume.

So a packed run is a warm restart, not the bit-identical continuation that `--resume` of a full state is.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from ..errors import UserInputError
from .loop import LATENTS_FILE, LOG_FILE, STAGES, STATE_FILE

PACKED_FORMAT = "delta_cache/train_tiny packed state v1"
_FP16_MAX = torch.finfo(torch.float16).max
# The stages that have an optimizer: their learning rate warms up again after an unpacked state.
_OPTIMIZED_STAGES = ("vae", "dit", "decoder")


def _halve(value):
    """fp32 tensors to fp16 (those that fit its range), recursively through dicts and lists."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.float32 and (value.numel() == 0 or value.abs().max() <= _FP16_MAX):
            return value.half()
        return value
    if isinstance(value, dict):
        return {k: _halve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_halve(v) for v in value)
    return value


def _widen(value):
    """The reverse of `_halve`: fp16 tensors back to fp32 (training never keeps fp16 weights)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.float16 else value
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_widen(v) for v in value)
    return value


def _from_ema(raw: dict, ema: dict, halved_ema: dict) -> dict:
    """`raw` (a state dict) with each weight that has an EMA replaced by the halved EMA tensor itself, so that
    torch.save stores it once; a tied weight (one storage under two names, the EMA keeps one) follows its
    twin. Weights without an EMA are kept (halved)."""
    def view(tensor: torch.Tensor) -> tuple:  # the same elements of the same storage
        return tensor.data_ptr(), tensor.shape, tensor.stride()

    twins = {view(raw[k]): k for k in ema if k in raw and raw[k].numel()}
    out = {}
    for key, tensor in raw.items():
        source = key if key in ema else twins.get(view(tensor)) if tensor.numel() else None
        out[key] = halved_ema[source] if source is not None else _halve(tensor)
    return out


def _load(path: Path, flag: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle traceback
        raise UserInputError(f"{flag}: {path} is not readable ({type(error).__name__}: {error})") from None


def _position(state: dict) -> tuple[int, int]:
    return STAGES.index(state["stage"]), state["step"]


def pack_state(work_dir: Path, path: Path) -> dict:
    """Write the run in `work_dir` (its state and log) to the single file `path`; returns (stage, step, bytes)."""
    state_file, log_file = work_dir / STATE_FILE, work_dir / LOG_FILE
    if not state_file.exists():
        raise UserInputError(f"--pack_state: no training state in {work_dir}")
    state = _load(state_file, "--pack_state")
    if path.exists():  # the committed progress must not go backwards (an old work dir packed over a newer run)
        previous = _load(path, "--pack_state")
        ours = isinstance(previous, dict) and previous.get("format") == PACKED_FORMAT
        if ours and _position(previous) > _position(state):
            raise UserInputError(f"--pack_state: {path} is further on ({previous['stage']} step {previous['step']}) "
                                 f"than {work_dir} ({state['stage']} step {state['step']}); not overwritten")
    packed = {k: _halve(v) for k, v in state.items() if not k.endswith("_optimizer")}
    if state.get("ema") and state.get("transformer"):  # from the transformer stage on: raw := EMA
        packed["transformer"] = _from_ema(state["transformer"], state["ema"], packed["ema"])
    for name, ema in (state.get("text_ema") or {}).items():
        packed["text_encoders"][name] = _from_ema(state["text_encoders"][name], ema, packed["text_ema"][name])
    packed["format"] = PACKED_FORMAT
    # mtime=0: packing the same state twice gives the same bytes (no new blob in the history)
    packed["log_gz"] = gzip.compress(log_file.read_bytes(), mtime=0) if log_file.exists() else b""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(packed, tmp)
    tmp.replace(path)  # atomic: an interruption leaves the previous packed state
    return {"stage": state["stage"], "step": state["step"], "bytes": path.stat().st_size}


def unpack_state(path: Path, work_dir: Path) -> dict:
    """Restore `work_dir`'s state and log from a packed file, for `--resume`; returns (stage, step)."""
    if not path.is_file():
        raise UserInputError(f"--unpack_state: {path} does not exist")
    packed = _load(path, "--unpack_state")
    if not isinstance(packed, dict) or packed.get("format") != PACKED_FORMAT:
        raise UserInputError(f"--unpack_state: {path} is not a packed training state (written by --pack_state)")
    leftovers = [name for name in (STATE_FILE, LATENTS_FILE) if (work_dir / name).exists()]
    if leftovers:
        raise UserInputError(f"--unpack_state: {work_dir} already holds {', '.join(leftovers)} of a run; resume that "
                             "one, or unpack into an empty --work_dir")
    log_gz = packed.pop("log_gz")
    packed.pop("format")
    state = _widen(packed)
    if state["stage"] in _OPTIMIZED_STAGES and state["step"] > 0:
        state.setdefault("warm_restarts", {})[state["stage"]] = state["step"]
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / LOG_FILE).write_bytes(gzip.decompress(log_gz) if log_gz else b"")
    tmp = work_dir / (STATE_FILE + ".tmp")  # the state last and atomically: it marks a complete unpack
    torch.save(state, tmp)
    tmp.replace(work_dir / STATE_FILE)
    return {"stage": state["stage"], "step": state["step"]}
