"""Recording what each block does during a real (uncached) generation, with bounded memory.

`ProfileProbe` attaches diffusers hooks to every block of the chosen block lists and to the transformer.
For the profiled branch (default "cond") at every step it records, per block:

- attention saliency: the first `scaled_dot_product_attention` call inside a block is its self-attention
  (Wan: attn1; HunyuanVideo: the joint image+text attention, image tokens first). For a fixed random
  subset of video-token queries (`max_queries`) it computes softmax(q k^T * scale) and averages over
  heads and queries: the attention each video token *receives*. Per frame, the top `high_fraction` of
  tokens are "high-attention"; only that bit mask is kept (real size: ~15 KB per block and step).
- residual sketch: the block's residual (output - input, hidden stream) on a fixed subset of tokens,
  projected to `sketch_dim` random directions. Sums of sketches are sketches of sums, so the residual of
  any run of blocks, and how much it changes between steps, can be estimated later for any schedule.
- the transformer output (noise prediction) step-to-step change.

Where the video tokens are (grid, tokens in front of them in the attention) is given in the settings, or,
for pipelines the front ends do not build (`pipelines.profile_pipeline`), read from the transformer's first
call by a `layout` function. Pipelines that batch the prompt with the negative prompt (CogVideoX, LTX-Video,
Mochi) are profiled on one sample of the batch (`sample`, the prompt's: the last).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, StateManager
from torch.overrides import TorchFunctionMode

from ..block_streams import register_video_blocks
from ..errors import UserInputError
from ..generations import UnnamedBranches, refuse_diffusion_forcing

_ROOT_HOOK = "delta_profile_root"
_BLOCK_HOOK = "delta_profile_block"
MAX_LOGITS = 2**27  # 0.5 GB of fp32 sampled attention logits at a time


@dataclass
class ProbeSettings:
    # (frames, height, width) of the patched video tokens; None: from the first call (ProfileProbe's `layout`)
    token_grid: tuple[int, int, int] | None
    # tokens in front of the video's in the blocks' sequence (VACE: one latent frame per reference image)
    leading_tokens: int = 0
    max_queries: int = 256
    high_fraction: float = 0.25
    sketch_tokens: int = 256
    sketch_dim: int = 64
    branch: str = "cond"
    seed: int = 0
    # tokens the self-attention puts in front of the blocks' sequence (CogVideoX: the text)
    attention_prefix_tokens: int = 0
    # the batch sample recorded (None: attention averaged over the batch, residual and output of sample 0, as
    # the front ends' batches of one); -1 for pipelines that batch [negative prompt, prompt]
    sample: int | None = None
    attention_call: int = 0  # which attention call in a block is its self-attention (Mochi: one per sample)


@dataclass
class ProbeRecord:
    """Everything recorded for one generation (one prompt)."""

    high_attention: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)  # list -> [step][block] bits
    sketches: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)  # list -> [step][block] (T, D)
    output_change: list[float] = field(default_factory=list)  # mean|v_s - v_{s-1}| / mean|v_{s-1}|, s >= 1
    output_change_abs: list[float] = field(default_factory=list)  # mean|v_s - v_{s-1}|
    # the pipeline's step index of each recorded step (its `cache_context`'s; without one, the count of recorded
    # steps) and its step count where it says it: where a transformer's steps lie in the run (Wan 2.2's experts)
    step_indices: list[int] = field(default_factory=list)
    num_inference_steps: int | None = None


class _CallState(BaseState):
    def __init__(self):
        self.reset()

    def reset(self):
        pass


class _SelfAttentionCapture(TorchFunctionMode):
    """Inside one block call: turn its self-attention (SDPA call number `attention_call`, the first but in Mochi)
    into received-attention saliency over video tokens."""

    def __init__(self, probe: "ProfileProbe"):
        super().__init__()
        self.probe = probe
        self.saliency: torch.Tensor | None = None
        self.calls = 0

    def _count_call(self) -> int:
        """This attention call's index in the block."""
        self.calls += 1
        return self.calls - 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self._count_call() == self.probe.settings.attention_call:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
            bound = dict(zip(names, args))
            bound.update(kwargs)
            self.saliency = self.probe._received_attention(bound["query"], bound["key"], bound.get("attn_mask"),
                                                           bound.get("scale"))
        return func(*args, **kwargs)


class _ProbeRootHook(ModelHook):
    _is_stateful = True

    def __init__(self, probe: "ProfileProbe"):
        super().__init__()
        self.probe = probe
        self.state_manager = StateManager(_CallState)
        self._unnamed = UnnamedBranches("unnamed")

    def new_forward(self, module, *args, **kwargs):
        refuse_diffusion_forcing(kwargs, "the profiler does not profile")
        context = self.state_manager._context
        if context is None:  # the first call of a timestep: pipelines that name no branch call the prompt's first
            active = self._unnamed.name(args, kwargs) == self._unnamed.base
        else:
            active = context.name == self.probe.settings.branch
        if active and self.probe.settings.token_grid is None:
            self.probe._resolve_layout(module, args, kwargs)
        self.probe._active = active
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.probe._active = False
        if active:
            self.probe._end_step(output[0] if isinstance(output, (tuple, list)) else output.sample, context)
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        self._unnamed.reset()
        return module


class _ProbeBlockHook(ModelHook):
    def __init__(self, probe: "ProfileProbe", list_name: str, index: int):
        super().__init__()
        self.probe, self.list_name, self.index = probe, list_name, index

    def new_forward(self, module, *args, **kwargs):
        if not self.probe._active:
            return self.fn_ref.original_forward(*args, **kwargs)
        metadata = TransformerBlockRegistry.get(type(module))
        hidden_in = metadata._get_parameter_from_args_kwargs(metadata.hidden_states_argument_name, args, kwargs)
        capture = _SelfAttentionCapture(self.probe)
        with capture:
            output = self.fn_ref.original_forward(*args, **kwargs)
        hidden_out = output[metadata.return_hidden_states_index] if isinstance(output, tuple) else output
        self.probe._record_block(self.list_name, self.index, capture.saliency, hidden_out - hidden_in)
        return output


class ProfileProbe:
    """Attach to a transformer, run one generation, `detach()`; read `record`."""

    def __init__(self, transformer: torch.nn.Module, block_lists: list[str], settings: ProbeSettings,
                 layout: Callable[[torch.nn.Module, tuple, dict], dict] | None = None):
        """`layout(transformer, args, kwargs)` -> ProbeSettings fields (token_grid, leading_tokens, ...) read from
        the transformer's first call, for settings without a token grid."""
        if settings.token_grid is None and layout is None:
            raise ValueError("ProfileProbe needs a token grid in its settings or a layout function")
        self.transformer = transformer
        self.block_lists = block_lists
        self.settings = settings
        self._layout = layout
        self._projection = None  # (dim, sketch_dim), built on first use with the model's width
        self._generator = torch.Generator().manual_seed(settings.seed)
        if settings.token_grid is not None:
            self._sample_tokens()
        self._active = False
        self._blocks_without_attention = 0  # in this step
        self._step_blocks: dict[str, list] = {}
        self._previous_output: torch.Tensor | None = None
        self.record = ProbeRecord(high_attention={n: [] for n in block_lists}, sketches={n: [] for n in block_lists})
        self._attach()

    def _sample_tokens(self) -> None:
        """The fixed random queries and sketch tokens, as positions in the blocks' sequence (the video's tokens
        come after the leading ones)."""
        self.num_video_tokens = int(np.prod(self.settings.token_grid))
        self._first_video_token = self.settings.leading_tokens + self.settings.attention_prefix_tokens  # (attention)
        self._queries = (torch.randperm(self.num_video_tokens, generator=self._generator)[: self.settings.max_queries]
                         + self._first_video_token)
        self._sketch_tokens = (torch.randperm(self.num_video_tokens, generator=self._generator)
                               [: self.settings.sketch_tokens] + self.settings.leading_tokens)

    def _resolve_layout(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.settings = dataclasses.replace(self.settings, **self._layout(transformer, args, kwargs))
        self._sample_tokens()

    @property
    def token_grid(self) -> tuple[int, int, int] | None:
        """The video's token grid (None before the first call, when a layout function reads it)."""
        return self.settings.token_grid

    # ---- hooks ---------------------------------------------------------------------------------
    def _attach(self) -> None:
        register_video_blocks()  # (the blocks diffusers' registry does not describe yet: SkyReels-V2, HunyuanVideo 1.5)
        for list_name in self.block_lists:
            for index, block in enumerate(getattr(self.transformer, list_name)):
                registry = HookRegistry.check_if_exists_or_initialize(block)
                registry.register_hook(_ProbeBlockHook(self, list_name, index), _BLOCK_HOOK)
        root = HookRegistry.check_if_exists_or_initialize(self.transformer)
        root.register_hook(_ProbeRootHook(self), _ROOT_HOOK)
        root.invalidate_child_registries_cache()

    def detach(self) -> None:
        root = HookRegistry.check_if_exists_or_initialize(self.transformer)
        root.remove_hook(_ROOT_HOOK, recurse=False)
        root.remove_hook(_BLOCK_HOOK, recurse=True)
        root.invalidate_child_registries_cache()

    # ---- recording -----------------------------------------------------------------------------
    @torch.no_grad()
    def _received_attention(self, query, key, attn_mask, scale) -> torch.Tensor:
        """(video tokens,) attention received from the sampled video-token queries, mean over heads."""
        self._check_length(key)
        sample = self.settings.sample
        if sample is not None:  # (one sample of the batch, kept as a batch of one)
            query, key = query[sample].unsqueeze(0), key[sample].unsqueeze(0)
            if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[0] > 1:
                attn_mask = attn_mask[sample].unsqueeze(0)
        queries = query[:, :, self._queries.to(query.device)]  # (B, H, Q, D)
        scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
        mask = attn_mask
        if mask is not None and mask.dim() == 4 and mask.shape[-2] == query.shape[-2]:  # a mask per query row
            mask = mask[:, :, self._queries.to(mask.device)]
        batch, heads, num_queries, _ = queries.shape
        # A few heads at a time keeps the sampled logits under MAX_LOGITS elements at any size.
        chunk = max(1, MAX_LOGITS // max(1, batch * num_queries * key.shape[-2]))
        received = torch.zeros(key.shape[-2], device=query.device, dtype=torch.float32)
        for first in range(0, heads, chunk):
            heads_slice = slice(first, first + chunk)
            logits = queries[:, heads_slice].float() @ key[:, heads_slice].float().transpose(-1, -2) * scale
            if mask is not None:
                m = mask[:, heads_slice] if mask.shape[1] == heads else mask
                logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m
            received += logits.softmax(dim=-1).sum(dim=(0, 1, 2))
        video = slice(self._first_video_token, self._first_video_token + self.num_video_tokens)
        return (received / (batch * heads * num_queries))[video].cpu()

    def _check_length(self, key: torch.Tensor) -> None:
        if key.shape[-2] < self._first_video_token + self.num_video_tokens:
            raise UserInputError(f"the self-attention has {key.shape[-2]} tokens, fewer than the "
                                 f"{self.num_video_tokens} video tokens after {self._first_video_token} others that "
                                 f"the token layout gives: this transformer call does not fit the layout")

    @torch.no_grad()
    def _record_block(self, list_name: str, index: int, saliency, residual: torch.Tensor) -> None:
        frames = self.settings.token_grid[0]
        if saliency is None:  # a block without attention: nothing is high-attention
            high = np.zeros(self.num_video_tokens, dtype=bool)
            self._blocks_without_attention += 1
        else:
            per_frame = saliency.reshape(frames, -1)
            count = max(1, round(self.settings.high_fraction * per_frame.shape[1]))
            top = per_frame.topk(count, dim=1).indices
            high = torch.zeros_like(per_frame, dtype=torch.bool).scatter_(1, top, True).reshape(-1).numpy()
        if self._projection is None:
            self._projection = torch.randn(residual.shape[-1], self.settings.sketch_dim,
                                           generator=self._generator) / math.sqrt(self.settings.sketch_dim)
        sample = self.settings.sample or 0
        tokens = residual[sample, self._sketch_tokens.to(residual.device)].float().cpu()
        sketch = (tokens @ self._projection).numpy().astype(np.float32)
        self._step_blocks.setdefault(list_name, []).append((index, np.packbits(high), sketch))

    @torch.no_grad()
    def _end_step(self, output: torch.Tensor, context=None) -> None:
        step_index = getattr(context, "step_index", None)
        self.record.step_indices.append(len(self.record.step_indices) if step_index is None else int(step_index))
        self.record.num_inference_steps = getattr(context, "num_inference_steps", None)
        blocks = sum(len(entries) for entries in self._step_blocks.values())
        if blocks and self._blocks_without_attention == blocks:
            raise UserInputError("the profiler saw no torch scaled_dot_product_attention call in any block: the "
                                 "transformer's attention runs on another backend (set_attention_backend, e.g. flash "
                                 "or sage); profile it on diffusers' native backend")
        self._blocks_without_attention = 0
        for list_name in self.block_lists:
            entries = sorted(self._step_blocks.get(list_name, []), key=lambda e: e[0])
            self.record.high_attention[list_name].append([bits for _, bits, _ in entries])
            self.record.sketches[list_name].append([sketch for _, _, sketch in entries])
        self._step_blocks = {}
        output = output.detach().float()
        if self.settings.sample is not None:
            output = output[self.settings.sample]
        if self._previous_output is not None:
            change = (output - self._previous_output).abs().mean().item()
            self.record.output_change_abs.append(change)
            self.record.output_change.append(change / max(self._previous_output.abs().mean().item(), 1e-12))
        self._previous_output = output
