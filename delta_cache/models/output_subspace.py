"""Which directions of a latent can a transformer write? A diagnostic for narrow (tiny) models.

A diffusion transformer predicts each token's velocity (or noise) with one final linear layer from its
hidden width to the token's latent values (channels x patch volume: 16 x 2 x 2 = 64 for Wan2.1 and
HunyuanVideo). Below that width every prediction lies in a fixed `width`-dimensional affine subspace of the
64, so a sampler never removes the starting noise along the other directions: the sample keeps it at full
strength there, while real latents have little variance there. Real models are far wider than 64; the
committed tiny previews (width 48) are not (docs/tiny-models.md, "Why the previews cannot draw").

The written subspace is measured from the transformer's own outputs during sampling (a forward hook), not
read from its weights, so it needs no knowledge of a model class's token layout: outputs and latents are
cut into tokens the same way (`patch_tokens`), and any consistent order gives the same subspace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Singular values below this share of the largest count as zero: in float32 the unwritten directions come out
# near 1e-7 and written ones above 1e-4 (the width-48 preview); half-precision rounding needs a coarser cut.
RELATIVE_RANK_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
HALF_PRECISION_TOLERANCE = 3e-2


def patch_tokens(latents: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, C, F, H, W) latents -> (B*F*H/ph*W/pw, C*ph*pw) float32 rows, one per spatial patch."""
    batch, channels, frames, height, width = latents.shape
    ph, pw = patch
    x = latents.float().reshape(batch, channels, frames, height // ph, ph, width // pw, pw)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(-1, channels * ph * pw)


@contextlib.contextmanager
def captured_outputs(transformer: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every output latent of `transformer` (all steps and CFG branches) while the block runs."""
    outputs: list[torch.Tensor] = []

    def keep(module, args, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        outputs.append(sample.detach().float().cpu())

    handle = transformer.register_forward_hook(keep)
    try:
        yield outputs
    finally:
        handle.remove()


@dataclass
class WrittenSubspace:
    basis: torch.Tensor  # (D, r) orthonormal columns: the directions the outputs move in
    singular_values: torch.Tensor  # (D,) of the centred output tokens, largest first

    @property
    def token_size(self) -> int:
        return self.basis.shape[0]

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def variance_split(self, tokens: torch.Tensor) -> tuple[float, float | None]:
        """Mean variance per direction of centred `tokens` inside the subspace and outside it (None if full)."""
        inside = variance_along(tokens, self.basis)
        outside = self.token_size - self.rank
        if not outside:
            return inside, None
        total = float((tokens - tokens.mean(0)).pow(2).sum(1).mean())
        return inside, (total - inside * self.rank) / outside


def quietest_directions(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """(D, count) orthonormal directions along which centred `tokens` (N, D) vary least (their PCA's tail)."""
    centred = tokens.double() - tokens.double().mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred / len(tokens))  # eigenvalues ascending
    return vectors[:, :count].float().contiguous()


def variance_along(tokens: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean variance per direction of centred `tokens` along orthonormal `directions` (D, k)."""
    return float(((tokens - tokens.mean(0)) @ directions).pow(2).sum(1).mean() / directions.shape[1])


def written_subspace(output_tokens: torch.Tensor, computed_in: torch.dtype = torch.float32) -> WrittenSubspace:
    """The subspace that `output_tokens` (N, D), a transformer's outputs computed in dtype `computed_in`,
    vary in (numerical rank)."""
    tolerance = RELATIVE_RANK_TOLERANCE.get(computed_in, HALF_PRECISION_TOLERANCE)
    centred = output_tokens.double() - output_tokens.double().mean(0)
    _, singular_values, vh = torch.linalg.svd(centred, full_matrices=False)
    rank = int((singular_values > tolerance * singular_values[0]).sum())
    return WrittenSubspace(basis=vh[:rank].T.float().contiguous(), singular_values=singular_values.float())
