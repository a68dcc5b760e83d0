"""Multi-GPU (Ulysses, ring) sampling for diffusers' WanVACETransformer3DModel, which ships no `_cp_plan`.

WanTransformer3DModel's own plan splits the video tokens on the way into the first main block, the RoPE
tables with them, and gathers after the output projection. The VACE transformer runs its control blocks
first, on the video tokens (the first control block adds them to its input) and the control tokens, so both
are split on the way into the first control block too. Every control hint is then computed on the rank's own
tokens and added to the same tokens of the main blocks' stream; the control and the video tokens have the
same count (the transformer pads the control tokens to it), so both split alike.
"""

from __future__ import annotations

from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from diffusers.models._modeling_parallel import ContextParallelInput

VACE_CP_PLAN = {
    **WanTransformer3DModel._cp_plan,  # rope, blocks.0, proj_out, as diffusers splits the T2V transformer
    "vace_blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        "control_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
}


def cp_plan(transformer) -> dict | None:
    """The plan to split `transformer` by: ours for VACE, None (the model's own `_cp_plan`) otherwise."""
    return VACE_CP_PLAN if isinstance(transformer, WanVACETransformer3DModel) else None
