"""Training the tiny models: the flow-matching objective, latent normalisation, and scripts/train_tiny.py."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from delta_cache.errors import UserInputError
from delta_cache.models.hunyuan_video import config as hv_config
from delta_cache.models.hunyuan_video.checkpoint import DIT_WEIGHT, load_hunyuan_video_components
from delta_cache.models.hunyuan_video.keys import rope_axes_dim
from delta_cache.models.hunyuan_video.pipeline import PromptEmbeds, TextEncoding, encode_prompt
from delta_cache.models.wan import keys
from delta_cache.models.wan.checkpoint import load_wan_components
from delta_cache.models.wan.pipeline import build_pipeline, generate, make_scheduler
from delta_cache.synthetic import make_video, prompts
from delta_cache.training import (
    channel_statistics,
    encode_latents,
    flow_matching_loss,
    fold_latent_statistics,
    object_weights,
    reconstruction_loss,
    sample_sigmas,
    shift_sigmas,
    vae_loss,
)
from delta_cache.training import data as training_data
from delta_cache.training import hunyuan_video as hunyuan_training
from delta_cache.training import loop as training_loop
from delta_cache.training import wan as wan_training
from delta_cache.video import to_vae_input
from script_loader import load_script
from tiny_training import REPO, TINY, train_tiny
from tiny_training import run as _run
from tiny_training import run_in_slices as _run_in_slices


def small_args(**overrides):
    args = train_tiny.parse_args(["--out", "/nonexistent"] + TINY)
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def build(family, args) -> dict:
    """The family's fresh modules for `args`, as train_tiny builds them."""
    return train_tiny.FAMILIES[family].build(args, training_data.init_seed(args))


def test_training_sigmas_use_the_samplers_shift():
    scheduler = make_scheduler("unipc", shift=5.0)
    scheduler.set_timesteps(10)
    grid = shift_sigmas(torch.linspace(0.999, 0.0, 11, dtype=torch.float64)[:-1], 5.0)
    assert torch.allclose(scheduler.sigmas[:-1].double(), grid, atol=1e-5)
    sigmas = sample_sigmas(20000, 5.0, torch.Generator().manual_seed(0))
    assert torch.equal(sigmas, sample_sigmas(20000, 5.0, torch.Generator().manual_seed(0)))
    assert 0 <= sigmas.min() and sigmas.max() <= 1
    assert sigmas.median().item() == pytest.approx(5 * 0.5 / (1 + 4 * 0.5), abs=0.01)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    args = small_args(warmup_steps=10, lr_decay="cosine", min_lr_ratio=0.1)
    rates = [training_loop.learning_rate(args, 1.0, step, 111) for step in range(111)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[60] == pytest.approx(0.55) and rates[110] == pytest.approx(0.1)  # halfway, last step
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    constant = small_args(warmup_steps=10, lr_decay="none")
    assert training_loop.learning_rate(constant, 1.0, 109, 110) == 1.0
    # A warm restart at step 60 (an unpacked state, no optimizer moments) warms up again to the schedule.
    restarted = [training_loop.learning_rate(args, 1.0, step, 111, restarted_at=60) for step in range(111)]
    assert restarted[:60] == rates[:60]
    assert restarted[60] == pytest.approx(0.1 * rates[60]) and restarted[64] == pytest.approx(0.5 * rates[64])
    assert restarted[69:] == rates[69:]


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
    vae = build("wan", small_args())["vae"].eval()
    videos = to_vae_input([make_video(i, num_frames=5, height=32, width=32).frames for i in range(3)])
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
    modules = build("wan", small_args())
    tokenizer = modules["tokenizer"]
    ids = [tokenizer(word).input_ids for word in prompts.vocabulary()]
    assert all(len(i) == 2 and i[1] == tokenizer.eos_token_id and i[0] != tokenizer.unk_token_id for i in ids)
    assert len({i[0] for i in ids}) == len(ids)  # one distinct token per word

    pipe = wan_training.text_pipeline(modules, torch.device("cpu"))
    a = "a red circle moves left slowly on a black background"
    b = a.replace("left", "right")
    embeds = wan_training.encode_prompts(pipe, [a, b, a, ""], torch.device("cpu"))
    assert embeds.shape == (4, 512, small_args().text_dim)
    assert torch.equal(embeds[0], embeds[2])
    assert (embeds[0] - embeds[1]).abs().max() > 1e-2
    assert (embeds[0] - embeds[3]).abs().max() > 1e-2


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    modules = build("wan", small_args())
    transformer = modules["transformer"].train()
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 3, 8, 8, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    sigmas = torch.tensor([0.5, 0.8])
    pipe = wan_training.text_pipeline(modules, torch.device("cpu"))
    embeds = wan_training.encode_prompts(pipe, [make_video(0, num_frames=1).prompt, make_video(1, num_frames=1).prompt],
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
    videos = to_vae_input([make_video(2, num_frames=5, height=32, width=32).frames])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-4)
    vae_losses = []
    for _ in range(12):
        parts = vae_loss(vae, videos, 1e-4, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        vae_losses.append(parts["loss"].item())
    assert vae_losses[-1] < 0.7 * vae_losses[0], vae_losses


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
    videos = to_vae_input([make_video(i, num_frames=9, height=64, width=64).frames for i in range(4)])
    mean, std = channel_statistics(encode_latents(components.vae, videos))
    assert mean.abs().max() < 0.05 and (std - 1).abs().max() < 0.05

    info = json.loads((out / train_tiny.INFO_FILE).read_text())
    assert info["native_size"] == {"width": 64, "height": 64, "num_frames": 9}

    pipe = build_pipeline(components, image_to_video=False, solver="unipc", shift=5.0)
    result = generate(pipe, prompt=make_video(0, "eval").prompt, negative_prompt="", width=64, height=64,
                      num_frames=9, num_inference_steps=2, guidance_scale=5.0, seed=0)
    assert result.frames.shape == (9, 64, 64, 3) and np.isfinite(result.frames).all()


def test_compiled_blocks_train_like_eager_ones(tmp_path):
    # --compile (diffusers' compile_repeated_blocks) with the compacted text attention and a trained text
    # encoder: the same parameter names in the state, and nearly the same weights as eager training.
    _run(tmp_path / "eager", "--train_text_encoder")
    _run(tmp_path / "compiled", "--train_text_encoder", "--compile")
    eager, compiled = (torch.load(tmp_path / f"{name}.work" / train_tiny.STATE_FILE, weights_only=False)
                       for name in ("eager", "compiled"))
    assert eager["transformer"].keys() == compiled["transformer"].keys()
    for name in ("blocks.1.ffn.net.2.weight", "proj_out.weight"):
        assert eager["transformer"][name].abs().max() > 0
        torch.testing.assert_close(compiled["transformer"][name], eager["transformer"][name], atol=1e-4, rtol=1e-3)


def test_decoder_stage_moves_only_the_decoding_half(tmp_path):
    _run(tmp_path / "plain", "--vae_lr", "1e-2")
    summaries = _run(tmp_path / "tuned", "--vae_lr", "1e-2", "--decoder_steps", "3", "--decoder_lr", "1e-2",
                     "--vae_check_videos", "1")
    assert summaries["decoder"]["steps"] == 3 and "round_trip" in summaries["decoder"]
    plain = torch.load(tmp_path / "plain" / keys.VAE_FILE, weights_only=True)
    tuned = torch.load(tmp_path / "tuned" / keys.VAE_FILE, weights_only=True)
    assert plain.keys() == tuned.keys()
    # upstream key names: encoder.* and conv1 (quant conv) encode, conv2 (post-quant conv) and decoder.* decode
    encoding = [k for k in plain if k.startswith(("encoder.", "conv1."))]
    decoding = [k for k in plain if k.startswith(("decoder.", "conv2."))]
    assert encoding and decoding and len(encoding) + len(decoding) == len(plain)
    assert all(torch.equal(plain[k], tuned[k]) for k in encoding)  # the latents keep their meaning
    assert any(not torch.equal(plain[k], tuned[k]) for k in decoding)
    a, b = load_file(tmp_path / "plain" / keys.TRANSFORMER_FILE), load_file(tmp_path / "tuned" / keys.TRANSFORMER_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # --vae_object_weight (default 4) reweights both stages' loss: the same run with a plain mean (0) trains
    # other VAE weights; --vae_edge_weight (default 0) adds the edge term to both: other weights again. (Lean
    # runs, 4x cheaper: one transformer step on two videos, no round-trip check.)
    lean = ["--vae_lr", "1e-2", "--decoder_steps", "3", "--decoder_lr", "1e-2", "--vae_check_videos", "0",
            "--dit_steps", "1", "--num_videos", "2"]
    _run(tmp_path / "lean", *lean)
    _run(tmp_path / "plain_mean", *lean, "--vae_object_weight", "0")
    _run(tmp_path / "edges", *lean, "--vae_edge_weight", "1")
    baseline = torch.load(tmp_path / "lean" / keys.VAE_FILE, weights_only=True)
    for name in ("plain_mean", "edges"):
        other = torch.load(tmp_path / name / keys.VAE_FILE, weights_only=True)
        assert any(not torch.equal(other[k], baseline[k]) for k in encoding), name
        assert any(not torch.equal(other[k], baseline[k]) for k in decoding), name
    recipes = [json.loads((tmp_path / name / "tiny_model.json").read_text())["recipe"]
               for name in ("lean", "plain_mean", "edges")]
    assert [recipe["vae_object_weight"] for recipe in recipes] == [4, 0, 4]
    assert [recipe["vae_edge_weight"] for recipe in recipes] == [0, 0, 1]


def _interrupt_then_resume(monkeypatch, run, out, wrong_flags: list[str], wrong_flag_message: str) -> None:
    """Stop a run of `run` in the middle of the transformer stage, check the refusals, then resume it."""
    original_log = training_loop.log  # run_steps logs every step through it

    def interrupt(args, record):
        if record["stage"] == "dit" and record["step"] == 3:
            raise KeyboardInterrupt
        original_log(args, record)

    monkeypatch.setattr(training_loop, "log", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    monkeypatch.setattr(training_loop, "log", original_log)
    assert not out.exists()  # nothing half-written
    with pytest.raises(UserInputError, match="--resume"):
        run(out)  # a state is there: refuse to start over silently
    with pytest.raises(UserInputError, match=wrong_flag_message):
        run(out, "--resume", *wrong_flags)
    run(out, "--resume")


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    _run(tmp_path / "straight")
    _interrupt_then_resume(monkeypatch, _run, tmp_path / "resumed", ["--seed", "1"], "--seed")

    for file in (keys.TRANSFORMER_FILE,):
        a, b = load_file(tmp_path / "straight" / file), load_file(tmp_path / "resumed" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a = torch.load(tmp_path / "straight" / keys.VAE_FILE, weights_only=True)
    b = torch.load(tmp_path / "resumed" / keys.VAE_FILE, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The summaries cover the whole stages, not only the resumed part (time per step aside).
    straight, resumed = (json.loads((tmp_path / name / train_tiny.INFO_FILE).read_text())["summaries"]
                         for name in ("straight", "resumed"))
    for summary in (*straight.values(), *resumed.values()):
        del summary["seconds_per_step"]
    assert resumed == straight and resumed["dit"]["steps"] == 4


def test_a_time_budget_stops_cleanly_and_resumes_to_the_same_weights(tmp_path):
    _run(tmp_path / "straight", "--decoder_steps", "2")
    first = _run(tmp_path / "sliced", "--decoder_steps", "2", "--stop_after_minutes", "1e-9")
    assert first == {"paused": {"stage": "vae", "step": 1}}  # after one step, between checkpoints
    assert not (tmp_path / "sliced").exists()
    state = torch.load(tmp_path / "sliced.work" / train_tiny.STATE_FILE, weights_only=False)
    assert (state["stage"], state["step"]) == ("vae", 1)

    def run(out, *extra):
        return _run(out, "--decoder_steps", "2", *extra)

    with pytest.raises(UserInputError, match="--train_text_encoder"):  # a different run: refused
        run(tmp_path / "sliced", "--resume", "--train_text_encoder")
    # Then one unit of work per call: vae step 2, latents, dit steps 1-4, decoder steps 1-2.
    assert _run_in_slices(run, tmp_path / "sliced", resume=True) == 1 + 1 + 4 + 2
    straight, sliced = (json.loads((tmp_path / name / train_tiny.INFO_FILE).read_text())["summaries"]
                        for name in ("straight", "sliced"))
    for summary in (*straight.values(), *sliced.values()):
        del summary["seconds_per_step"]
    assert sliced == straight
    for file in (keys.TRANSFORMER_FILE,):
        a, b = load_file(tmp_path / "straight" / file), load_file(tmp_path / "sliced" / file)
        assert all(torch.equal(a[k], b[k]) for k in a)
    a = torch.load(tmp_path / "straight" / keys.VAE_FILE, weights_only=True)
    b = torch.load(tmp_path / "sliced" / keys.VAE_FILE, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserInputError, match="--stop_after_minutes must be > 0"):
        _run(tmp_path / "x", "--stop_after_minutes", "0")


def test_export_state_writes_the_ema_weights_midway_and_the_final_checkpoint_at_the_end(tmp_path):
    def run(out, *extra):
        return _run(out, "--train_text_encoder", *extra)

    def export(name):
        return train_tiny.main(["--export_state", "--work_dir", str(tmp_path / "run.work"), "--out", str(tmp_path / name)])

    run(tmp_path / "run", "--stop_after_minutes", "1e-9")  # stops in the VAE stage: nothing to export yet
    with pytest.raises(UserInputError, match="at its vae stage"):
        export("early")
    _run_in_slices(run, tmp_path / "run", until=lambda s: s.get("paused") == {"stage": "dit", "step": 2}, resume=True)
    assert export("midway") == {"out": str(tmp_path / "midway"), "snapshot": {"stage": "dit", "step": 2}}
    state = torch.load(tmp_path / "run.work" / train_tiny.STATE_FILE, weights_only=False)
    midway = load_wan_components(tmp_path / "midway", task="t2v-14B", dtype=torch.float32)

    def saved_as(loaded: dict, weights: dict) -> bool:
        """Whether `loaded` holds `weights` as written: in fp16, or in fp32 where the model keeps it."""
        return all(torch.equal(loaded[k], w.float()) or torch.equal(loaded[k], w.half().float())
                   for k, w in weights.items())

    # the EMA weights, not the raw ones, of the transformer and the trained text encoder
    assert saved_as(midway.transformer.state_dict(), state["ema"])
    assert not saved_as(midway.transformer.state_dict(), {k: state["transformer"][k] for k in state["ema"]})
    text = midway.text_encoder.state_dict()
    assert saved_as(text, state["text_ema"]["text_encoder"])
    assert not saved_as(text, {k: state["text_encoders"]["text_encoder"][k] for k in state["text_ema"]["text_encoder"]})
    info = json.loads((tmp_path / "midway" / train_tiny.INFO_FILE).read_text())
    assert info["snapshot"] == {"stage": "dit", "step": 2} and info["recipe"]["num_layers"] == 2
    with pytest.raises(UserInputError, match="exists and is not empty"):
        export("midway")
    with pytest.raises(UserInputError, match="needs --work_dir"):
        train_tiny.main(["--export_state", "--out", str(tmp_path / "x")])

    _run_in_slices(run, tmp_path / "run", resume=True)  # to the end: the run writes its checkpoint
    export("end")
    for file in (keys.TRANSFORMER_FILE,):
        a, b = load_file(tmp_path / "run" / file), load_file(tmp_path / "end" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for file in (keys.VAE_FILE, keys.T5_FILE):
        a, b = (torch.load(tmp_path / name / file, weights_only=True) for name in ("run", "end"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["wan", "hunyuan_video"])
def test_a_lost_latents_file_is_re_encoded_on_resume(tmp_path, family):
    # latents.pt is too large to carry between machines: a resume re-encodes it with the state's folded VAE.
    run = _run if family == "wan" else _run_hunyuan
    out, work = tmp_path / "ckpt", tmp_path / "ckpt.work"
    _run_in_slices(run, out, until=lambda summaries: summaries["paused"]["stage"] == "dit")
    original = torch.load(work / train_tiny.LATENTS_FILE, weights_only=False)
    (work / train_tiny.LATENTS_FILE).unlink()
    run(out, "--resume", "--stop_after_minutes", "1e-9")  # re-encodes, then one transformer step
    again = torch.load(work / train_tiny.LATENTS_FILE, weights_only=False)
    assert again["prompts"] == original["prompts"]
    torch.testing.assert_close(again["latents"].float(), original["latents"].float(), atol=2e-2, rtol=1e-2)

    # A state from before the statistics were kept in it cannot re-encode: one clear error.
    (work / train_tiny.LATENTS_FILE).unlink()
    state = torch.load(work / train_tiny.STATE_FILE, weights_only=False)
    del state["latent_statistics"]
    torch.save(state, work / train_tiny.STATE_FILE)
    with pytest.raises(UserInputError, match="latents.pt is missing"):
        run(out, "--resume")


def test_warm_start_from_a_checkpoint_inherits_its_shape_and_weights(tmp_path, monkeypatch):
    _run(tmp_path / "first")
    # No shape or size flags: they come from the first checkpoint's recipe (9 frames of 64x64, 2 blocks, ...);
    # with no training steps the transformer is exactly the first one's and the VAE reconstructs as before.
    summaries = train_tiny.main(["--out", str(tmp_path / "second"), "--init_from", str(tmp_path / "first"),
                                 "--threads", "1", "--device", "cpu", "--vae_steps", "0", "--dit_steps", "0",
                                 "--num_videos", "4", "--batch_size", "2", "--vae_batch_size", "1",
                                 "--vae_check_videos", "0"])
    assert summaries["dit"]["steps"] == 0
    a, b = load_file(tmp_path / "first" / keys.TRANSFORMER_FILE), load_file(tmp_path / "second" / keys.TRANSFORMER_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a[keys.transformer_key_to_upstream("proj_out.weight")].abs().max() > 0  # trained, not the zero init
    info = json.loads((tmp_path / "second" / train_tiny.INFO_FILE).read_text())
    assert info["native_size"] == {"width": 64, "height": 64, "num_frames": 9}
    assert info["recipe"]["num_layers"] == 2 and info["initial_recipe"]["dit_steps"] == 4
    videos = to_vae_input([make_video(i, num_frames=9, height=64, width=64).frames for i in range(2)])
    first = load_wan_components(tmp_path / "first", task="t2v-1.3B").vae
    second = load_wan_components(tmp_path / "second", task="t2v-1.3B").vae
    with torch.no_grad():
        before = first.decode(first.encode(videos).latent_dist.mean).sample
        after = second.decode(second.encode(videos).latent_dist.mean).sample
    assert (after - before).abs().max() < 2e-2  # fp16 storage of a re-folded VAE
    # The same weights under another --seed: the fixed-batch probes are the same batches, so the same losses.
    reseeded = train_tiny.main(["--out", str(tmp_path / "reseeded"), "--init_from", str(tmp_path / "first"),
                                "--threads", "1", "--device", "cpu", "--vae_steps", "0", "--dit_steps", "0",
                                "--num_videos", "4", "--batch_size", "2", "--vae_batch_size", "1", "--seed", "5",
                                "--vae_check_videos", "0"])
    for stage in ("vae", "dit"):
        assert reseeded[stage]["fixed_batch_loss_start"] == summaries[stage]["fixed_batch_loss_start"]

    # Interrupted in the VAE stage and resumed, with another seed (whose fresh transformer and text encoder
    # differ): the transformer and text encoder still come from the first checkpoint.
    warm = ["--init_from", str(tmp_path / "first"), "--threads", "1", "--device", "cpu", "--vae_steps", "2",
            "--dit_steps", "0", "--num_videos", "4", "--batch_size", "2", "--vae_batch_size", "1", "--seed", "5",
            "--checkpoint_every", "1", "--vae_check_videos", "0"]
    original_log = training_loop.log  # run_steps logs every step through it

    def interrupt(args, record):
        if record["stage"] == "vae" and record["step"] == 1 and "loss" in record:
            raise KeyboardInterrupt
        original_log(args, record)

    monkeypatch.setattr(training_loop, "log", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_tiny.main(["--out", str(tmp_path / "third"), *warm])
    monkeypatch.setattr(training_loop, "log", original_log)
    train_tiny.main(["--out", str(tmp_path / "third"), *warm, "--resume"])
    c = load_file(tmp_path / "third" / keys.TRANSFORMER_FILE)
    assert all(torch.equal(a[k], c[k]) for k in a)
    t5_first = torch.load(tmp_path / "first" / keys.T5_FILE, weights_only=True)
    t5_third = torch.load(tmp_path / "third" / keys.T5_FILE, weights_only=True)
    assert all(torch.equal(t5_first[k], t5_third[k]) for k in t5_first)

    with pytest.raises(UserInputError, match="hunyuan_video model|wan model"):
        _run_hunyuan(tmp_path / "h", "--init_from", str(tmp_path / "first"))
    with pytest.raises(UserInputError, match="no tiny_model.json"):
        _run(tmp_path / "x", "--init_from", str(tmp_path))
    with pytest.raises(UserInputError, match="does not fit"):
        _run(tmp_path / "y", "--init_from", str(tmp_path / "first"), "--num_layers", "3")

    # --init_components vae text_encoder: a new transformer of another shape on the first run's VAE and text
    # encoder; the transformer's shape flags not given are the family defaults (40 blocks), not inherited.
    train_tiny.main(["--out", str(tmp_path / "new_dit"), "--init_from", str(tmp_path / "first"),
                     "--init_components", "vae", "text_encoder", "--num_heads", "3", "--head_dim", "8",
                     "--ffn_dim", "16", "--threads", "1", "--device", "cpu", "--vae_steps", "0", "--dit_steps", "0",
                     "--num_videos", "4", "--batch_size", "2", "--vae_batch_size", "1", "--vae_check_videos", "0"])
    config = json.loads((tmp_path / "new_dit" / "config.json").read_text())
    assert (config["num_layers"], config["num_heads"], config["dim"]) == (40, 3, 24)
    t5_new = torch.load(tmp_path / "new_dit" / keys.T5_FILE, weights_only=True)
    assert all(torch.equal(t5_first[k], t5_new[k]) for k in t5_first)
    new_vae = load_wan_components(tmp_path / "new_dit", task="t2v-1.3B").vae
    with torch.no_grad():
        assert (new_vae.decode(new_vae.encode(videos).latent_dist.mean).sample - before).abs().max() < 2e-2
    with pytest.raises(UserInputError, match="--init_components needs --init_from"):
        _run(tmp_path / "z", "--init_components", "vae")
    with pytest.raises(UserInputError, match="a wan model has no text_encoder_2"):
        _run(tmp_path / "z", "--init_from", str(tmp_path / "first"), "--init_components", "text_encoder_2")


class IdentityVAE:
    """encode -> decode gives the input back: a perfect VAE for the round-trip check."""

    def encode(self, videos):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=videos))

    def decode(self, latents):
        return SimpleNamespace(sample=latents)


class BlankVAE(IdentityVAE):
    def decode(self, latents):
        return SimpleNamespace(sample=torch.zeros_like(latents))  # mid-grey frames: no object, no background


def test_vae_round_trip_check_reads_the_reconstructions(tmp_path):
    args = small_args(vae_check_videos=4)
    perfect = train_tiny.vae_round_trip(args, IdentityVAE(), torch.device("cpu"))
    assert perfect["agreement"] == 1.0 and perfect["psnr"] > 50 and set(perfect["attributes"].values()) == {1.0}
    blank = train_tiny.vae_round_trip(args, BlankVAE(), torch.device("cpu"))
    assert blank["agreement"] == 0.0 and blank["attributes"]["count"] == 0.0 and blank["psnr"] < 20
    assert perfect["ssim"] > 0.99 and blank["ssim"] < 0.9
    # Flat clips of each background colour: exact through the identity, mid-grey through the blank VAE.
    assert set(perfect["flat_backgrounds"]) == {"black", "gray", "white", "brown"}
    assert max(perfect["flat_backgrounds"].values()) < 1
    assert blank["flat_backgrounds"]["black"] > 150 and blank["flat_backgrounds"]["gray"] < 20

    # Below --min_vae_agreement the run stops after the VAE stage, with a state that resumes into more VAE steps.
    with pytest.raises(UserInputError, match="--min_vae_agreement"):
        _run(tmp_path / "gated", "--min_vae_agreement", "0.9", "--vae_check_videos", "2")
    assert not (tmp_path / "gated").exists()
    state = torch.load(tmp_path / "gated.work" / train_tiny.STATE_FILE, weights_only=False)
    assert state["stage"] == "vae" and state["step"] == 2
    summaries = _run(tmp_path / "gated", "--resume", "--vae_steps", "3", "--vae_check_videos", "2")
    assert summaries["vae"]["steps"] == 3 and summaries["vae"]["round_trip"]["videos"] == 2  # the whole stage
    with pytest.raises(UserInputError, match="--min_vae_agreement needs"):
        _run(tmp_path / "x", "--min_vae_agreement", "0.5", "--vae_check_videos", "0")


def test_bad_arguments_are_one_line_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserInputError, match="not empty"):
        _run(tmp_path / "full")
    with pytest.raises(UserInputError, match="hunyuan_video flag"):
        _run(tmp_path / "h", "--num_single_layers", "2")
    with pytest.raises(UserInputError, match="hunyuan_video flag"):
        _run(tmp_path / "h", "--vae_norm_groups", "2")
    with pytest.raises(UserInputError, match="--vae_norm_groups 3 must be >= 1 and divide --vae_base_dim 4"):
        _run_hunyuan(tmp_path / "h", "--vae_norm_groups", "3")
    with pytest.raises(UserInputError, match="multiple of 4"):
        _run_hunyuan(tmp_path / "h", "--head_dim", "10")
    with pytest.raises(UserInputError, match="mlp_ratio"):
        _run_hunyuan(tmp_path / "h", "--num_heads", "1", "--head_dim", "28", "--ffn_dim", "61")  # 28 * (61 / 28) < 61
    with pytest.raises(UserInputError, match="4n\\+1"):
        _run(tmp_path / "f", "--num_frames", "8")
    with pytest.raises(UserInputError, match="no training state"):
        _run(tmp_path / "r", "--resume")
    with pytest.raises(UserInputError, match="--min_lr_ratio"):
        _run(tmp_path / "l", "--min_lr_ratio", "2")
    with pytest.raises(UserInputError, match="--vae_object_weight must be >= 0"):
        _run(tmp_path / "w", "--vae_object_weight", "-1")
    with pytest.raises(UserInputError, match="--vae_edge_weight must be >= 0"):
        _run(tmp_path / "e", "--vae_edge_weight", "-1")


# --- the hunyuan_video family --------------------------------------------------------------------------

HUNYUAN_TINY = TINY + ["--family", "hunyuan_video", "--num_single_layers", "2", "--ffn_dim", "48", "--text_dim", "16"]


def _run_hunyuan(out, *extra):
    return train_tiny.main(["--out", str(out), *HUNYUAN_TINY, *extra])


sample_video = load_script(REPO / "HunyuanVideo" / "sample_video.py")


def hunyuan_args(*extra):
    return train_tiny.parse_args(["--out", "/nonexistent", *HUNYUAN_TINY, *extra])


@pytest.mark.parametrize("family", ["wan", "hunyuan_video"])
def test_default_width_writes_every_output_value_and_narrow_ones_warn(family, capsys):
    # A width below the 64 values of an output token (16 latent channels x a 2x2 patch) confines every
    # predicted velocity to a width-dimensional subspace: the committed width-48 previews' flaw.
    narrow = build(family, small_args(family=family, num_single_layers=(
        1 if family == "hunyuan_video" else None), ffn_dim=48, text_dim=16))["transformer"]
    out = narrow.proj_out
    assert out.in_features == 24 < out.out_features == 64
    train_tiny.warn_if_narrow(narrow)
    assert "width 24" in capsys.readouterr().out

    defaults = train_tiny.parse_args(["--out", "/x", "--family", family])
    train_tiny.warn_if_narrow(build(family, defaults)["transformer"])
    assert "warning" not in capsys.readouterr().out


def test_family_defaults():
    wan = train_tiny.parse_args(["--out", "/x"])
    # the Wan defaults are those of the runs already started (a resumed run compares them)
    assert (wan.num_layers, wan.num_heads, wan.head_dim, wan.ffn_dim, wan.text_dim, wan.vae_base_dim, wan.shift,
            wan.num_single_layers) == (40, 4, 24, 384, 32, 12, 5.0, None)
    hv = train_tiny.parse_args(["--out", "/x", "--family", "hunyuan_video"])
    assert (hv.num_layers, hv.num_single_layers, hv.num_heads, hv.head_dim, hv.ffn_dim, hv.text_dim,
            hv.vae_base_dim) == (20, 40, 3, 24, 288, 32, 12)
    assert train_tiny.parse_args(["--out", "/x", "--family", "hunyuan_video", "--num_heads", "4"]).num_heads == 4

    # training uses the front end's defaults: flow shift, embedded guidance, text flags and prompt template
    front = sample_video.build_parser().parse_args(["--prompt", "x"])
    assert hv.shift == front.flow_shift == hunyuan_training.FLOW_SHIFT == 7.0
    assert front.embedded_cfg_scale == hunyuan_training.EMBEDDED_GUIDANCE_SCALE
    encoding = hunyuan_training.text_encoding(17)
    assert encoding == TextEncoding(
        template=hv_config.prompt_template(17, front.prompt_template, front.prompt_template_video),
        text_len=front.text_len, text_len_2=front.text_len_2, hidden_state_skip_layer=front.hidden_state_skip_layer,
        apply_final_norm=front.apply_final_norm)
    assert encoding.template["crop_start"] == 95


def test_hunyuan_video_prompts_are_encoded_as_at_sampling():
    modules = build("hunyuan_video", hunyuan_args())
    for tokenizer, specials in ((modules["tokenizer"], 1), (modules["tokenizer_2"], 2)):
        ids = [tokenizer(word).input_ids for word in prompts.vocabulary()]
        assert all(len(i) == 1 + specials for i in ids)  # bos (+ eos for CLIP) and one token
        assert len({i[1] for i in ids}) == len(ids)
    spaced = [modules["tokenizer"](" " + word).input_ids for word in prompts.vocabulary()]
    assert all(len(i) == 2 for i in spaced)  # Llama-3 pieces carry the leading space

    device = torch.device("cpu")
    text_pipe = hunyuan_training.text_pipeline(modules, device, hunyuan_args())
    pipe, encoding = text_pipe
    a = "a red circle moves left slowly on a black background"
    b = a.replace("left", "right")
    batch = [a, b, "", hunyuan_training.NEGATIVE_PROMPT]
    encoded = hunyuan_training.encode_prompts(text_pipe, batch, device)
    lengths = encoded.attention_mask.sum(dim=1).tolist()
    assert encoded.embeds.shape[1] == max(lengths) < 40 and lengths[2] == 1  # "" is the template's <|eot_id|>
    # sampling encodes one prompt at a time, untrimmed (256 tokens)
    for i, prompt in enumerate(batch):
        single = encode_prompt(pipe, prompt, encoding, device)
        assert single.embeds.shape[1] == 256
        n = lengths[i]
        assert torch.allclose(encoded.embeds[i, :n], single.embeds[0, :n], atol=1e-6)
        assert torch.equal(encoded.attention_mask[i], single.attention_mask[0, :encoded.embeds.shape[1]])
        assert torch.allclose(encoded.pooled[i], single.pooled[0], atol=1e-6)
    assert (encoded.embeds[0] - encoded.embeds[1]).abs().max() > 1e-3
    assert (encoded.pooled[0] - encoded.pooled[1]).abs().max() > 1e-3


def test_trimmed_text_padding_gives_the_same_prediction():
    modules = build("hunyuan_video", hunyuan_args())
    transformer = modules["transformer"].eval()
    with torch.no_grad():  # undo the zero init, or every output would be 0
        for name, param in transformer.named_parameters():
            if param.abs().max() == 0:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    device = torch.device("cpu")
    pipe, encoding = hunyuan_training.text_pipeline(modules, device, hunyuan_args())
    full = encode_prompt(pipe, ["a red circle moves left slowly on a black background", "a blue square moves up"],
                         encoding, device)
    trimmed = hunyuan_training.trim_text_padding(full)
    assert full.embeds.shape[1] == 256 and trimmed.embeds.shape[1] == 11  # 10 words and <|eot_id|>

    def predict(text):
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(2, 16, 2, 4, 4, generator=g)
        with torch.no_grad():
            return transformer(hidden_states=latents, timestep=torch.tensor([300.0, 800.0]),
                               encoder_hidden_states=text.embeds, encoder_attention_mask=text.attention_mask,
                               pooled_projections=text.pooled, guidance=torch.full((2,), 6000.0), return_dict=False)[0]

    reference = predict(full)
    assert torch.allclose(predict(trimmed), reference, atol=1e-5)
    cut = dataclasses.replace(trimmed, embeds=trimmed.embeds[:, :5], attention_mask=trimmed.attention_mask[:, :5])
    assert (predict(cut) - reference).abs().max() > 1e-3  # dropping real tokens does change it


def test_wan_compacted_text_padding_gives_the_same_prediction():
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from delta_cache.training.text_padding import compact_text, compact_text_attention

    modules = build("wan", small_args(num_layers=3))
    transformer = modules["transformer"].eval()
    with torch.no_grad():  # undo the zero init, or every output would be 0
        for name, param in transformer.named_parameters():
            if param.abs().max() == 0:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    pipe = wan_training.text_pipeline(modules, torch.device("cpu"))
    # prompts of different lengths, the empty one (a single </s>) among them
    texts = ["a red circle moves left slowly and a blue square moves up quickly on a black background", "",
             "a red circle"]
    embeds = wan_training.encode_prompts(pipe, texts, torch.device("cpu"))
    longest, empty, short = (len(modules["tokenizer"](t).input_ids) for t in texts)
    assert (longest, empty, short) == (18, 1, 4)  # one token a word, plus </s>
    compact, bias = compact_text(embeds)
    assert embeds.shape[1] == 512 and compact.shape[1] == longest + 1  # plus one padding column
    assert bias[0, 0, 0, -1].item() == pytest.approx(np.log(512 - longest))
    assert bias[1, 0, 0, 0].item() == 0 and bias[1, 0, 0, 1].item() == pytest.approx(np.log(511 / longest))
    assert bias[2, 0, 0, :short].eq(0).all() and bias[2, 0, 0, short].item() == pytest.approx(
        np.log((512 - short) / (longest + 1 - short)))

    g = torch.Generator().manual_seed(0)
    latents, timestep = torch.randn(3, 16, 2, 4, 4, generator=g), torch.tensor([100.0, 500.0, 900.0])

    def predict(text):
        with torch.no_grad():
            return transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                               return_dict=False)[0]

    reference = predict(embeds)
    with compact_text_attention(transformer) as prepare:
        assert torch.allclose(predict(prepare(embeds)), reference, atol=1e-5)
        for block in transformer.blocks:
            block.attn2.processor.bias = None
        assert (predict(compact) - reference).abs().max() > 1e-3  # the bias is what makes it exact
    # what training feeds: T5 run up to the longest prompt only, zero-padded to 64 columns
    trimmed = wan_training.encode_training_prompts(pipe, texts, torch.device("cpu"))
    assert trimmed.shape[1] == longest and torch.allclose(trimmed, embeds[:, :longest], atol=1e-6)
    with wan_training.text_attention(transformer) as prepare:
        compact_64 = prepare(trimmed)
        assert compact_64.shape[1] == wan_training.TEXT_COLUMNS
        assert torch.allclose(predict(compact_64), reference, atol=1e-5)
    assert all(type(block.attn2.processor) is WanAttnProcessor for block in transformer.blocks)  # restored


def test_text_encoder_trains_with_the_transformer_and_loads(tmp_path):
    out = tmp_path / "ckpt"
    _run(out, "--train_text_encoder", "--lr", "1e-2")
    fresh = build("wan", small_args())["text_encoder"].state_dict()
    state = torch.load(tmp_path / "ckpt.work" / train_tiny.STATE_FILE, weights_only=False)
    saved = state["text_encoders"]["text_encoder"]
    assert state["args"]["train_text_encoder"]
    changed = [k for k in fresh if not torch.equal(fresh[k], saved[k])]
    assert changed and any("layer" in k for k in changed)  # the encoder's layers moved, not just the embedding
    loaded = load_wan_components(out, task="t2v-14B").text_encoder.state_dict()
    name = changed[-1]
    assert torch.allclose(loaded[name].float(), saved[name].half().float())  # the EMA weights, fp16 on disk

    frozen = tmp_path / "frozen"
    _run(frozen)
    loaded = load_wan_components(frozen, task="t2v-14B").text_encoder.state_dict()
    assert torch.allclose(loaded[name].float(), fresh[name].half().float())  # default: frozen at its init


class RecordingHunyuan(torch.nn.Module):
    def __init__(self, prediction):
        super().__init__()
        self.prediction, self.calls = prediction, []

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return (self.prediction,)


def test_hunyuan_video_flow_matching_loss_inputs_and_target():
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 16, 2, 4, 4, generator=g), torch.randn(2, 16, 2, 4, 4, generator=g)
    sigmas = torch.tensor([0.25, 0.9])
    text = PromptEmbeds(embeds=torch.randn(2, 3, 8, generator=g), attention_mask=torch.ones(2, 3, dtype=torch.long),
                        pooled=torch.randn(2, 8, generator=g))
    exact = RecordingHunyuan(noise - latents)
    assert hunyuan_training.flow_matching_loss(exact, latents, text, sigmas, noise).item() == pytest.approx(0, abs=1e-12)
    call = exact.calls[0]
    assert torch.allclose(call["hidden_states"][1], 0.1 * latents[1] + 0.9 * noise[1], atol=1e-6)
    assert torch.allclose(call["timestep"], torch.tensor([250.0, 900.0]))
    assert torch.equal(call["guidance"], torch.tensor([6000.0, 6000.0]))  # the pipeline's guidance_scale * 1000
    assert call["encoder_hidden_states"] is text.embeds and call["encoder_attention_mask"] is text.attention_mask
    assert call["pooled_projections"] is text.pooled
    zero = RecordingHunyuan(torch.zeros_like(latents))
    expected = (noise - latents).pow(2).mean().item()
    assert hunyuan_training.flow_matching_loss(zero, latents, text, sigmas, noise).item() == pytest.approx(expected)


def test_hunyuan_video_vae_fold_and_whole_clip_encoding():
    vae = build("hunyuan_video", hunyuan_args())["vae"].eval()
    videos = to_vae_input([make_video(i, num_frames=17, height=32, width=32).frames for i in range(2)])
    with torch.no_grad():
        # 17 frames: diffusers encodes with temporal tiles; the whole-clip encoding is the same
        tiled = vae.encode(videos).latent_dist.mean
        raw = hunyuan_training.encode_clip(vae, videos).mean
        assert raw.shape == (2, 16, 5, 4, 4) and torch.allclose(tiled, raw, atol=1e-6)
        before = hunyuan_training.decode_clip(vae, raw)
        posterior_std = hunyuan_training.encode_clip(vae, videos).std
    mean, std = channel_statistics(raw)
    scale = vae.config.scaling_factor
    assert scale == 0.476986 and (std * scale - 1).abs().max() > 0.5  # far from normalised: the test can fail
    hunyuan_training.fold_scaling_factor(vae, mean, std)
    with torch.no_grad():
        folded = hunyuan_training.encode_clip(vae, videos)
        after = hunyuan_training.decode_clip(vae, folded.mean)
    new_mean, new_std = channel_statistics(folded.mean * scale)  # what the pipeline feeds the transformer
    assert new_mean.abs().max() < 1e-4 and (new_std - 1).abs().max() < 1e-4
    assert torch.allclose(folded.std, posterior_std / (scale * std).view(1, -1, 1, 1, 1), rtol=1e-3)
    assert (after - before).abs().max() < 1e-4
    # The family's VAE objective takes the edge term (--vae_edge_weight) as Wan's does: plain loss + weight x edge.
    with torch.no_grad():
        plain = hunyuan_training.vae_loss(vae, videos, 1e-4, torch.Generator().manual_seed(0))
        edged = hunyuan_training.vae_loss(vae, videos, 1e-4, torch.Generator().manual_seed(0), edge_weight=2.0)
    assert "edge" not in plain and edged["edge"] > 0
    assert edged["loss"].item() == pytest.approx(plain["loss"].item() + 2 * edged["edge"], rel=1e-5)


def test_states_saved_before_a_model_flag_existed_build_as_they_were_trained(tmp_path):
    # A state written before --vae_norm_groups (and --train_text_encoder) has no entry for them: the utilities
    # that read a run (--check_vae_state, --export_state) must build its VAE with the groups it trained with.
    recorded = {k: v for k, v in vars(hunyuan_args("--vae_base_dim", "8")).items()
                if k not in ("vae_norm_groups", "train_text_encoder")}
    run, modules = train_tiny.state_modules({"args": recorded}, tmp_path)
    assert run.vae_norm_groups is None and run.train_text_encoder is False
    assert {m.num_groups for m in modules["vae"].modules() if isinstance(m, torch.nn.GroupNorm)} == {2}


def test_hunyuan_video_script_trains_and_sample_video_loads_it(tmp_path, monkeypatch):
    out = tmp_path / "ckpts"
    summaries = _run_hunyuan(out, "--vae_norm_groups", "2")  # (default here: 4 channels / 4 = 1 group)
    assert set(summaries) == {"vae", "dit"} and summaries["dit"]["steps"] == 4
    assert summaries["dit"]["fixed_batch_loss_end"] < summaries["dit"]["fixed_batch_loss_start"]
    info = json.loads((out / train_tiny.INFO_FILE).read_text())
    assert info["family"] == "hunyuan_video" and info["sample_shift"] == 7.0
    assert info["native_size"] == {"width": 64, "height": 64, "num_frames": 9}

    # loads like a released checkpoint; the weights are the trained (EMA) ones, in bf16 as upstream's file
    components = load_hunyuan_video_components(out / DIT_WEIGHT, out, dtype=torch.float32, vae_dtype=torch.float32,
                                               text_encoder_dtype=torch.float32, text_encoder_2_dtype=torch.float32)
    config = components.transformer.config
    assert (config.num_layers, config.num_single_layers, config.guidance_embeds) == (2, 2, True)
    assert tuple(config.rope_axes_dim) == rope_axes_dim(12) and config.mlp_ratio == 2.0
    stored = torch.load(out / DIT_WEIGHT, weights_only=True)["module"]
    assert stored["double_blocks.0.img_attn_proj.weight"].dtype == torch.bfloat16
    trained = torch.load(tmp_path / "ckpts.work" / train_tiny.STATE_FILE, weights_only=False)["transformer"]
    loaded = components.transformer.state_dict()
    for name in ("transformer_blocks.1.ff.net.2.weight", "single_transformer_blocks.1.proj_out.weight", "proj_out.weight"):
        assert torch.equal(loaded[name], trained[name].to(torch.bfloat16).float())
    assert trained["proj_out.weight"].abs().max() > 0  # trained away from its zero init
    words = [components.tokenizer(" " + w).input_ids for w in prompts.vocabulary()]
    assert all(len(i) == 2 for i in words)  # the saved tokenizer still has one token per grammar word

    # the VAE was built, and is written and read back, with the requested norm groups
    norms = [m for m in components.vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert components.vae.config.norm_num_groups == 2 and norms and {m.num_groups for m in norms} == {2}

    # the released scaling factor, times the folded VAE's latents, standardises the training latents
    assert components.vae.config.scaling_factor == 0.476986
    videos = to_vae_input([make_video(i, num_frames=9, height=64, width=64).frames for i in range(4)])
    with torch.no_grad():
        latents = hunyuan_training.encode_clip(components.vae, videos).mean * 0.476986
    mean, std = channel_statistics(latents)
    assert mean.abs().max() < 0.05 and (std - 1).abs().max() < 0.05

    # the front end, upstream command line without --video-size / --video-length: the native size
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MODEL_BASE", str(out))
    sample_video.main(["--model-base", str(out), "--dit-weight", str(out / DIT_WEIGHT), "--infer-steps", "2",
                       "--prompt", make_video(0, "eval").prompt, "--flow-reverse", "--seed", "0"])
    videos = list((work / "results").glob("*_seed0_*.mp4"))
    assert len(videos) == 1
    import imageio.v2 as imageio

    with imageio.get_reader(str(videos[0]), format="ffmpeg") as reader:
        frames = np.stack([frame for frame in reader])  # (not list(reader): its len() is inf)
    assert frames.shape == (9, 64, 64, 3)


def test_sample_video_size_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_BASE", str(tmp_path / "none"))

    def sizes(model_base, *extra):
        args = sample_video.build_parser().parse_args(["--prompt", "x", "--model-base", str(model_base), *extra])
        sample_video.apply_size_defaults(args)
        return list(args.video_size), args.video_length

    assert sizes(tmp_path) == ([720, 1280], 129)  # upstream's defaults without tiny_model.json
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 96, "height": 64, "num_frames": 13}}))
    assert sizes(tiny) == ([64, 96], 13)
    assert sizes(tiny, "--video-length", "5") == ([64, 96], 5)
    assert sizes(tiny, "--video-size", "60", "90") == ([60, 90], 13)  # rounded up to 64x96: the native size
    assert sizes(tiny, "--video-size", "32", "32") == ([32, 32], 129)  # another size: upstream's length
    monkeypatch.setenv("MODEL_BASE", str(tiny))  # the weights' folder, when --model-base is another one
    assert sizes(tmp_path) == ([64, 96], 13)


def test_hunyuan_video_resume_gives_the_same_weights(tmp_path, monkeypatch):
    # with the trained text encoders and the decoder stage, which the family shares with Wan
    def run(out, *extra):
        return _run_hunyuan(out, "--train_text_encoder", "--decoder_steps", "3", *extra)

    assert run(tmp_path / "straight")["decoder"]["steps"] == 3
    fresh = build("hunyuan_video", hunyuan_args())
    for name in ("text_encoder", "text_encoder_2"):  # they did train
        trained = load_file(tmp_path / "straight" / name / "model.safetensors")
        initial = fresh[name].state_dict()
        shared = [k for k in trained if k in initial]
        assert shared and any(not torch.equal(trained[k], initial[k].to(trained[k].dtype)) for k in shared)
    _interrupt_then_resume(monkeypatch, run, tmp_path / "resumed", ["--num_single_layers", "3"],
                           "--num_single_layers")

    for file in (DIT_WEIGHT, "hunyuan-video-t2v-720p/vae/pytorch_model.pt", "text_encoder/model.safetensors",
                 "text_encoder_2/model.safetensors"):
        read = load_file if file.endswith(".safetensors") else lambda path: torch.load(path, weights_only=True)
        a, b = read(tmp_path / "straight" / file), read(tmp_path / "resumed" / file)
        a, b = a.get("module", a), b.get("module", b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_object_crops_show_objects_and_uniform_crops_are_unchanged():
    # --vae_object_crops 1: every VAE crop is centred on an object pixel, so it shows some object.
    args = small_args(vae_object_crops=1.0, vae_batch_size=6, vae_frames=1, vae_crop=16)
    clips = training_data.vae_batch(args, step=3).videos
    rng = training_data.step_rng(args, "vae", 3)
    indices = rng.integers(0, 10**9, size=6)
    for clip, index in zip(clips, indices):
        video = make_video(int(index), "train", num_frames=9, height=64, width=64)
        background = torch.tensor(prompts.BACKGROUND_COLOURS[video.scene.background]).float() / 127.5 - 1.0
        differs = (clip[:, 0] - background.view(3, 1, 1)).abs().amax(dim=0) > 0.1
        assert differs.any(), video.prompt
    # Whole clips: the crop is centred on the object in a random frame of the clip, not always the first
    # (objects move out of a small crop: centring on the first frame left later frames mostly background).
    args = small_args(vae_object_crops=1.0, vae_batch_size=32, vae_frames=9, vae_crop=16)
    clips = training_data.vae_batch(args, step=0).videos
    centre = clips[:, :, :, 7:9, 7:9]  # (B, 3, F, 2, 2) around the crop centre
    rng = training_data.step_rng(args, "vae", 0)
    shows = []
    for clip_centre, index in zip(centre, rng.integers(0, 10**9, size=32)):
        video = make_video(int(index), "train", num_frames=9, height=64, width=64)
        background = torch.tensor(prompts.BACKGROUND_COLOURS[video.scene.background]).float() / 127.5 - 1.0
        shows.append((clip_centre - background.view(3, 1, 1, 1)).abs().amax(dim=(0, 2, 3)) > 0.1)  # per frame
    shows = torch.stack(shows)  # (B, F): an object at the crop centre in that frame
    assert shows.any(dim=1).all()
    assert (~shows[:, 0] & shows[:, 1:].any(dim=1)).any()  # some crops centre on an object that frame 0 lacks
    # --vae_object_crops 0 draws exactly what uniform crops drew before the flag existed.
    uniform = small_args(vae_object_crops=0.0)
    rng = training_data.step_rng(uniform, "vae", 5)
    expected = []
    for index in rng.integers(0, 10**9, size=uniform.vae_batch_size):
        frames = make_video(int(index), "train", num_frames=9, height=64, width=64).frames
        t0 = int(rng.integers(0, 9 - 5 + 1))
        y0, x0 = int(rng.integers(0, 64 - 32 + 1)), int(rng.integers(0, 64 - 32 + 1))
        expected.append(frames[t0:t0 + 5, y0:y0 + 32, x0:x0 + 32])
    torch.testing.assert_close(training_data.vae_batch(uniform, step=5).videos, to_vae_input(expected))


def test_vae_batch_masks_are_the_objects_of_its_crops():
    # Flat colours on a flat background: a pixel differs from the background exactly where an object is.
    args = small_args(vae_object_crops=0.5, vae_batch_size=6, vae_frames=5, vae_crop=32)
    batch = training_data.vae_batch(args, step=7)
    assert batch.masks.shape == (6, 5, 32, 32) and batch.masks.dtype == torch.bool and batch.masks.any()
    rng = training_data.step_rng(args, "vae", 7)
    for clip, mask, index in zip(batch.videos, batch.masks, rng.integers(0, 10**9, size=6)):
        video = make_video(int(index), "train", num_frames=9, height=64, width=64)
        background = torch.tensor(prompts.BACKGROUND_COLOURS[video.scene.background]).float() / 127.5 - 1.0
        assert torch.equal((clip - background.view(3, 1, 1, 1)).abs().amax(dim=0) > 1e-3, mask), video.prompt
    assert batch.pixel_weights(small_args(vae_object_weight=0.0)) is None  # a plain mean
    weights = batch.pixel_weights(small_args(vae_object_weight=3.0))
    assert weights.shape == (6, 1, 5, 32, 32) and (weights[:, 0][batch.masks] == 4.0).all()


def test_object_weights_cover_objects_and_a_band_and_weight_the_loss():
    mask = torch.zeros(1, 2, 12, 12, dtype=torch.bool)
    mask[0, 0, 5:7, 5:7] = True  # frame 1 has no object
    weights = object_weights(mask, 4.0, band=2)
    assert weights.shape == (1, 1, 2, 12, 12)
    assert (weights[0, 0, 0, 3:9, 3:9] == 5.0).all() and weights[0, 0, 0].sum() == 36 * 5 + (144 - 36)
    assert (weights[0, 0, 1] == 1.0).all()
    # Weighted means: an error of 1 on the object's 4 pixels of 288 weighs 5x with weight 4 and no band.
    videos = torch.zeros(1, 3, 2, 12, 12)
    reconstruction = videos.clone()
    reconstruction[:, :, 0, 5:7, 5:7] = 1.0
    plain = reconstruction_loss(reconstruction, videos)
    assert plain["l1"] == pytest.approx(4 / 288)
    weighted = reconstruction_loss(reconstruction, videos, object_weights(mask, 4.0, band=0))
    assert weighted["l1"] == pytest.approx(4 * 5 / (288 + 4 * 4)) and weighted["mse"] == pytest.approx(weighted["l1"])
    uniform = reconstruction_loss(reconstruction, videos, torch.full((1, 1, 2, 12, 12), 3.0))
    assert uniform["loss"].item() == pytest.approx(plain["loss"].item())


def test_edge_term_counts_errors_that_change_across_neighbours():
    videos = torch.zeros(1, 3, 1, 4, 4)
    # The same error everywhere (a colour shift) has no edge part: the loss is the plain one.
    shifted = reconstruction_loss(videos + 0.5, videos, edge_weight=1.0)
    assert shifted["edge"] == 0.0 and shifted["loss"].item() == pytest.approx(0.5 + 0.25)
    # A stray vertical line at column 2: 2 of the 3 horizontal neighbour pairs of each row change by 1, no
    # vertical pair changes.
    line = videos.clone()
    line[..., 2] = 1.0
    parts = reconstruction_loss(line, videos, edge_weight=2.0)
    assert parts["edge"] == pytest.approx(2 / 3)
    assert parts["loss"].item() == pytest.approx(parts["l1"] + parts["mse"] + 2 * 2 / 3)
    # Weighted: a pair weighs what its right (lower) pixel weighs; weight 5 on column 3 makes the pairs
    # (0,1), (1,2), (2,3) weigh 1, 1, 5 with changes 0, 1, 1.
    weights = torch.ones(1, 1, 1, 4, 4)
    weights[..., 3] = 5.0
    assert reconstruction_loss(line, videos, weights, edge_weight=1.0)["edge"] == pytest.approx(6 / 7)
    assert "edge" not in reconstruction_loss(line, videos)  # off by default
