"""What every family's modules share: the result of a timed generation, and how checkpoint files that cannot
be read become one clear line (`CheckpointError`)."""

from __future__ import annotations

import json
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from ..errors import CheckpointError, UserInputError

# What loaders raise on unreadable, truncated, garbage or inconsistent files (a pickle of garbage raises
# IndexError, a config of the wrong type TypeError or AttributeError, a zero head count ZeroDivisionError).
FILE_ERRORS = (OSError, ValueError, RuntimeError, KeyError, EOFError, IndexError, TypeError, AttributeError,
               ArithmeticError, pickle.UnpicklingError, SafetensorError)


def declared_count(value) -> int | None:
    """A count a config declares (layers, heads) if it is a positive integer, else None (read before loading,
    where the loader reports a bad value)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def first_line(err: BaseException) -> str:
    """An exception's message in one line (its first, at most 300 characters), or its type's name."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def pipeline_input_error(pipe, err: Exception) -> UserInputError | None:
    """A diffusers pipeline's refusal of its inputs as one line: its own checks (ValueError) or an argument it does
    not take (a TypeError naming it); None for any other error, which is a bug to show whole."""
    if isinstance(err, ValueError) or (isinstance(err, TypeError) and "argument" in str(err)):
        return UserInputError(f"{type(pipe).__name__}: {first_line(err)}")
    return None


def read_model_index(path: Path) -> dict:
    """A diffusers folder's model_index.json as a dict; a file that is not a JSON object is one line."""
    try:
        index = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read it as JSON ({first_line(err)})") from None
    if not isinstance(index, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return index


@contextmanager
def library_warnings_off():
    """diffusers' and transformers' loggers at error level for the duration."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def from_pretrained_checked(cls, folder, what: str, *, weights: bool = True, **kwargs):
    """`cls.from_pretrained(folder, **kwargs)` (diffusers or transformers), with every failure one
    CheckpointError naming `what` and the folder. For models (`weights`), weights that the folder lacks would be
    left at random initial values and mismatched shapes dropped, silently: both are refused."""
    where = Path(folder) / kwargs["subfolder"] if "subfolder" in kwargs else Path(folder)
    try:
        with library_warnings_off():  # (their "newly initialized" lists would precede our one line)
            if not weights:
                return cls.from_pretrained(folder, **kwargs)
            model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    except FILE_ERRORS as err:
        raise CheckpointError(f"cannot load {where} ({what}): {first_line(err)}") from None
    # (keys the library ties to another weight or may leave out are not missing)
    allowed = [str(k) for k in (getattr(model, "_tied_weights_keys", None) or ())]
    allowed += [str(k) for k in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ())]
    missing = sorted(k for k in info.get("missing_keys") or () if not any(re.search(a, k) for a in allowed))
    mismatched = list(info.get("mismatched_keys") or ())
    if missing:
        raise CheckpointError(f"{where} ({what}): the weights lack {len(missing)} of the model's tensors, e.g. "
                              f"{missing[0]}")
    if mismatched:
        raise CheckpointError(f"{where} ({what}): {len(mismatched)} weights do not fit the config's shapes, e.g. "
                              f"{mismatched[0][0] if isinstance(mismatched[0], tuple) else mismatched[0]}")
    return model


@dataclass
class Generation:
    frames: np.ndarray  # (F, H, W, C) float in [0, 1]
    denoise_seconds: float  # the denoising loop alone: no text encoding, no decoding


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_tokenizer_vocabulary(tokenizer, where):
    """`tokenizer`, after checking it has a vocabulary: a tokenizer folder without its vocabulary file (e.g.
    tokenizer.json) still loads, as a tokenizer that knows only its special tokens, so every word becomes the
    unknown token and every prompt reads alike."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is None:  # (byte-level tokenizers have no unknown token)
        return tokenizer
    words = "a red square moves left"
    if tokenizer(words, add_special_tokens=False).input_ids.count(unknown) >= len(words.split()):
        raise CheckpointError(f"{where}: the tokenizer knows none of the words of a plain prompt ({len(tokenizer)} "
                              "tokens); is its vocabulary file (tokenizer.json, spiece.model, vocab.json) missing?")
    return tokenizer
