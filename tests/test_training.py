"""Training the tiny models: the flow-matching objective, latent normalisation, and scripts/train_tiny.py."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from delta_cache.errors import UserInputError
from delta_cache.models.wan import keys
from delta_cache.models.wan.checkpoint import load_wan_components
from delta_cache.models.wan.pipeline import build_pipeline, generate, make_scheduler
from delta_cache.synthetic import make_video, prompts
from delta_cache.training import (
    channel_statistics,
    encode_latents,
    flow_matching_loss,
    fold_latent_statistics,
    sample_sigmas,
    shift_sigmas,
    vae_loss,
)

REPO = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "scripts" / "train_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tiny = _load_script()

# The smallest settings that still exercise every stage (seconds on one CPU thread).
TINY = ["--threads", "1", "--device", "cpu", "--vae_steps", "2", "--dit_steps", "4", "--batch_size", "2",
        "--vae_batch_size", "1", "--num_videos", "4", "--num_layers", "2", "--num_heads", "2", "--head_dim", "12",
        "--ffn_dim", "32", "--vae_base_dim", "4", "--num_frames", "9", "--height", "64", "--width", "64",
        "--vae_frames", "5", "--vae_crop", "32", "--checkpoint_every", "2", "--warmup_steps", "1"]


def small_args(**overrides):
    args = train_tiny.parse_args(["--out", "/nonexistent"] + TINY)
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def test_training_sigmas_use_the_samplers_shift():
    scheduler = make_scheduler("unipc", shift=5.0)
    scheduler.set_timesteps(10)
    grid = shift_sigmas(torch.linspace(0.999, 0.0, 11, dtype=torch.float64)[:-1], 5.0)
    assert torch.allclose(scheduler.sigmas[:-1].double(), grid, atol=1e-5)
    sigmas = sample_sigmas(20000, 5.0, torch.Generator().manual_seed(0))
    assert torch.equal(sigmas, sample_sigmas(20000, 5.0, torch.Generator().manual_seed(0)))
    assert 0 <= sigmas.min() and sigmas.max() <= 1
    assert sigmas.median().item() == pytest.approx(5 * 0.5 / (1 + 4 * 0.5), abs=0.01)


class RecordingModel(torch.nn.Module):
    """Stands in for the transformer: records its inputs and returns a fixed prediction."""

    def __init__(self, prediction):
        super().__init__()
        self.prediction, self.calls = prediction, []

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict):
        self.calls.append((hidden_states, timestep, encoder_hidden_states))
        return (self.prediction,)


def test_flow_matching_loss_inputs_and_target():
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 16, 2, 4, 4, generator=g), torch.randn(2, 16, 2, 4, 4, generator=g)
    sigmas, embeds = torch.tensor([0.25, 0.9]), torch.randn(2, 7, 8, generator=g)

    exact = RecordingModel(noise - latents)
    assert flow_matching_loss(exact, latents, embeds, sigmas, noise).item() == pytest.approx(0.0, abs=1e-12)
    noisy, timestep, passed = exact.calls[0]
    assert torch.allclose(noisy[1], 0.1 * latents[1] + 0.9 * noise[1], atol=1e-6)
    assert torch.allclose(timestep, torch.tensor([250.0, 900.0])) and passed is embeds

    zero = RecordingModel(torch.zeros_like(latents))
    expected = (noise - latents).pow(2).mean().item()
    assert flow_matching_loss(zero, latents, embeds, sigmas, noise).item() == pytest.approx(expected, rel=1e-6)


def test_folding_latent_statistics_normalises_and_keeps_reconstructions():
    vae = train_tiny.build_wan_modules(small_args())["vae"].eval()
    videos = train_tiny.to_tensor([make_video(i, num_frames=5, height=32, width=32).frames for i in range(3)])
    with torch.no_grad():
        posterior = vae.encode(videos).latent_dist
        raw = posterior.mean
        before = vae.decode(raw).sample
    mean, std = channel_statistics(raw)
    assert (std - 1).abs().max() > 0.5  # a fresh VAE is far from normalised: the test can fail
    fold_latent_statistics(vae, mean, std)
    normalised = encode_latents(vae, videos)
    new_mean, new_std = channel_statistics(normalised)
    assert new_mean.abs().max() < 1e-4 and (new_std - 1).abs().max() < 1e-4
    # the posterior's spread is rescaled with its mean (same relative noise as before the fold)
    with torch.no_grad():
        folded = vae.encode(videos).latent_dist
    scale = (torch.tensor(vae.config.latents_std) / std).view(1, -1, 1, 1, 1)
    assert torch.allclose(folded.std, posterior.std * scale, rtol=1e-3)
    with torch.no_grad():
        after = vae.decode(vae.encode(videos).latent_dist.mean).sample
    assert (after - before).abs().max() < 1e-4


def test_tokenizer_and_text_encoder_tell_prompts_apart():
    modules = train_tiny.build_wan_modules(small_args())
    tokenizer = modules["tokenizer"]
    ids = [tokenizer(word).input_ids for word in prompts.vocabulary()]
    assert all(len(i) == 2 and i[1] == tokenizer.eos_token_id and i[0] != tokenizer.unk_token_id for i in ids)
    assert len({i[0] for i in ids}) == len(ids)  # one distinct token per word

    pipe = train_tiny.text_pipeline(modules, torch.device("cpu"))
    a = "a red circle moves left slowly on a black background"
    b = a.replace("left", "right")
    embeds = train_tiny.encode_prompts(pipe, [a, b, a, ""], torch.device("cpu"))
    assert embeds.shape == (4, 512, small_args().text_dim)
    assert torch.equal(embeds[0], embeds[2])
    assert (embeds[0] - embeds[1]).abs().max() > 1e-2
    assert (embeds[0] - embeds[3]).abs().max() > 1e-2


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    modules = train_tiny.build_wan_modules(small_args())
    transformer = modules["transformer"].train()
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 3, 8, 8, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    sigmas = torch.tensor([0.5, 0.8])
    pipe = train_tiny.text_pipeline(modules, torch.device("cpu"))
    embeds = train_tiny.encode_prompts(pipe, [make_video(0, num_frames=1).prompt, make_video(1, num_frames=1).prompt],
                                       torch.device("cpu"))
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = flow_matching_loss(transformer, latents, embeds, sigmas, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses

    vae = modules["vae"].train()
    videos = train_tiny.to_tensor([make_video(2, num_frames=5, height=32, width=32).frames])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-4)
    vae_losses = []
    for _ in range(12):
        parts = vae_loss(vae, videos, 1e-4, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        vae_losses.append(parts["loss"].item())
    assert vae_losses[-1] < 0.7 * vae_losses[0], vae_losses


def _run(out, *extra):
    return train_tiny.main(["--out", str(out), *TINY, *extra])


def test_script_writes_a_checkpoint_that_loads_and_samples(tmp_path):
    out = tmp_path / "ckpt"
    summaries = _run(out)
    assert set(summaries) == {"vae", "dit"} and summaries["dit"]["steps"] == 4
    assert summaries["dit"]["fixed_batch_loss_end"] < summaries["dit"]["fixed_batch_loss_start"]

    components = load_wan_components(out, task="t2v-14B")
    assert components.transformer.config.num_layers == 2 and components.layout == "upstream"
    # fp16 on disk, except what the model keeps in fp32; the values are the trained (EMA) ones
    stored = load_file(out / keys.TRANSFORMER_FILE)
    assert stored["blocks.0.self_attn.q.weight"].dtype == torch.float16
    assert stored["blocks.0.modulation"].dtype == torch.float32
    trained = torch.load(tmp_path / "ckpt.work" / train_tiny.STATE_FILE, weights_only=False)["transformer"]
    loaded = components.transformer.state_dict()
    for name in ("blocks.1.ffn.net.2.weight", "proj_out.weight", "blocks.0.scale_shift_table"):
        assert torch.allclose(loaded[name], trained[name].half().float() if name != "blocks.0.scale_shift_table"
                              else trained[name])
    assert trained["proj_out.weight"].abs().max() > 0  # trained away from its zero init

    # The default latents_mean / latents_std of the loaded VAE standardise the training latents.
    videos = train_tiny.to_tensor([make_video(i, num_frames=9, height=64, width=64).frames for i in range(4)])
    mean, std = channel_statistics(encode_latents(components.vae, videos))
    assert mean.abs().max() < 0.05 and (std - 1).abs().max() < 0.05

    info = json.loads((out / train_tiny.INFO_FILE).read_text())
    assert info["native_size"] == {"width": 64, "height": 64, "num_frames": 9}

    pipe = build_pipeline(components, image_to_video=False, solver="unipc", shift=5.0)
    result = generate(pipe, prompt=make_video(0, "eval").prompt, negative_prompt="", width=64, height=64,
                      num_frames=9, num_inference_steps=2, guidance_scale=5.0, seed=0)
    assert result.frames.shape == (9, 64, 64, 3) and np.isfinite(result.frames).all()


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    _run(tmp_path / "straight")

    original_log = train_tiny.log

    def interrupt(args, record):
        if record["stage"] == "dit" and record["step"] == 3:
            raise KeyboardInterrupt
        original_log(args, record)

    monkeypatch.setattr(train_tiny, "log", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "resumed")
    monkeypatch.setattr(train_tiny, "log", original_log)
    assert not (tmp_path / "resumed").exists()
    with pytest.raises(UserInputError, match="--resume"):
        _run(tmp_path / "resumed")  # a state is there: refuse to start over silently
    with pytest.raises(UserInputError, match="--seed"):
        _run(tmp_path / "resumed", "--resume", "--seed", "1")
    _run(tmp_path / "resumed", "--resume")

    for file in (keys.TRANSFORMER_FILE,):
        a, b = load_file(tmp_path / "straight" / file), load_file(tmp_path / "resumed" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a = torch.load(tmp_path / "straight" / keys.VAE_FILE, weights_only=True)
    b = torch.load(tmp_path / "resumed" / keys.VAE_FILE, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_arguments_are_one_line_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserInputError, match="not empty"):
        _run(tmp_path / "full")
    with pytest.raises(UserInputError, match="not implemented"):
        _run(tmp_path / "h", "--family", "hunyuan_video")
    with pytest.raises(UserInputError, match="4n\\+1"):
        _run(tmp_path / "f", "--num_frames", "8")
    with pytest.raises(UserInputError, match="no training state"):
        _run(tmp_path / "r", "--resume")
