"""The written-subspace diagnostic (delta_cache/models/output_subspace.py, scripts/check_output_rank.py)."""

from pathlib import Path

import pytest
import torch

from delta_cache.errors import UserInputError
from delta_cache.models.output_subspace import patch_tokens, quietest_directions, variance_along, written_subspace
from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent


def test_patch_tokens_cut_latents_into_spatial_patches():
    latents = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 3, 2, 4, 6)  # B, C, F, H, W
    tokens = patch_tokens(latents, (2, 2))
    assert tokens.shape == (2 * 2 * 2 * 3, 3 * 4)
    # the token of batch 1, frame 1, patch row 1, patch column 2 holds exactly that 2x2 patch of every channel
    index = ((1 * 2 + 1) * 2 + 1) * 3 + 2
    assert torch.equal(tokens[index], latents[1, :, 1, 2:4, 4:6].reshape(-1))


def test_written_subspace_and_the_variance_outside_it():
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    written, unwritten = basis[:, :5], basis[:, 5:]
    outputs = torch.randn(400, 5, generator=generator) @ written.T + 3.0  # an affine 5-dim family of outputs
    subspace = written_subspace(outputs)
    assert (subspace.token_size, subspace.rank) == (8, 5)
    # tokens with variance 2 per written direction and 0.25 per unwritten one
    tokens = (2 ** 0.5 * torch.randn(20000, 5, generator=generator) @ written.T
              + 0.5 * torch.randn(20000, 3, generator=generator) @ unwritten.T)
    inside, outside = subspace.variance_split(tokens)
    assert inside == pytest.approx(2.0, rel=0.05) and outside == pytest.approx(0.25, rel=0.05)
    quiet = quietest_directions(tokens, 3)  # the tokens' least-varying directions are the unwritten ones
    assert torch.allclose((unwritten.T @ quiet).abs().pow(2).sum(0), torch.ones(3), atol=0.01)
    assert variance_along(tokens, quiet) == pytest.approx(0.25, rel=0.05)
    full = written_subspace(torch.randn(400, 8, generator=generator))
    assert full.rank == 8 and full.variance_split(tokens)[1] is None


def test_check_output_rank_on_the_committed_models(tmp_path):
    script = load_script(REPO / "scripts" / "check_output_rank.py")
    # Both committed models are wider than a token (HunyuanVideo 72, Wan 96; until 2026-12-06 the HunyuanVideo
    # model was a 48-wide preview that left unit noise in 16 directions): every direction is written and
    # little noise is left where real latents are quiet. (The narrow case: the synthetic test above.)
    for family in ("hunyuan_video", "wan"):
        result = script.main(["--family", family, "--num_pairs", "1", "--sample_steps", "4"])
        assert (result["token_size"], result["rank"]) == (64, 64) and result["generated"][1] is None, family
        assert result["quiet"][1] < 0.05, family
    with pytest.raises(UserInputError, match="must be >= 1"):
        script.main(["--num_pairs", "0"])
    with pytest.raises(UserInputError, match="a token has only 64 values"):
        script.main(["--quiet_directions", "65"])
    with pytest.raises(UserInputError, match="no tiny_model.json"):
        script.main(["--ckpt_dir", str(tmp_path)])
