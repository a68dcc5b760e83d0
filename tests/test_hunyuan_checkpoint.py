"""HunyuanVideo checkpoint loading: key conversion (any width), both layouts, fp8, VAE config, errors."""

import json
import shutil

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from delta_cache.errors import CheckpointError
from delta_cache.models.hunyuan_video.checkpoint import (
    DIT_WEIGHT,
    load_hunyuan_video_components,
    vae_kwargs_from_upstream_config,
)
from delta_cache.models.hunyuan_video.keys import (
    convert_hunyuan_video_transformer,
    convert_to_upstream,
    rope_axes_dim,
    transformer_config_from_state_dict,
)
from delta_cache.models.hunyuan_video.tiny import build_tiny_components, write_tiny_checkpoint

torch.set_num_threads(1)  # tiny matmuls are ~1000x slower with two threads on 2-core machines

FP32 = dict(dtype=torch.float32, vae_dtype=torch.float32, text_encoder_dtype=torch.float32,
            text_encoder_2_dtype=torch.float32)


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hunyuan")
    upstream = write_tiny_checkpoint(root / "ckpts", fp8=True)
    diffusers = write_tiny_checkpoint(root / "diffusers", layout="diffusers")
    return upstream, diffusers


# --- key conversion --------------------------------------------------------------------------------

def test_converter_matches_diffusers_at_real_width():
    # The released width (3072, 24 x 128) with one block of each kind; uint8 keeps it ~0.9 GB.
    with init_empty_weights():
        meta = HunyuanVideoTransformer3DModel(num_layers=1, num_single_layers=1)
    generator = torch.Generator().manual_seed(0)
    reference = {k: torch.randint(0, 256, v.shape, dtype=torch.uint8, generator=generator)
                 for k, v in meta.state_dict().items()}

    upstream = convert_to_upstream(reference)
    assert "single_blocks.0.linear1.weight" in upstream and "double_blocks.0.img_attn_qkv.weight" in upstream
    # diffusers' own converter (fixed width 3072) is the independent reference for both directions.
    assert_same_tensors(convert_hunyuan_video_transformer_to_diffusers(dict(upstream)), reference)
    assert_same_tensors(convert_hunyuan_video_transformer(upstream), reference)

    assert transformer_config_from_state_dict(upstream) == {
        "in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128,
        "num_layers": 1, "num_single_layers": 1, "num_refiner_layers": 2, "mlp_ratio": 4.0,
        "patch_size": 2, "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True,
        "text_embed_dim": 4096, "pooled_projection_dim": 768, "rope_theta": 256.0, "rope_axes_dim": (16, 56, 56),
    }


def test_round_trip_and_config_at_tiny_width():
    model = build_tiny_components(num_layers=2, num_single_layers=3, num_attention_heads=3, attention_head_dim=24,
                                  text_embed_dim=40, pooled_projection_dim=20)["transformer"]
    state = model.state_dict()
    upstream = convert_to_upstream(state)
    assert_same_tensors(convert_hunyuan_video_transformer(upstream), state)
    assert_same_tensors(convert_to_upstream(convert_hunyuan_video_transformer(upstream)), upstream)
    # the fused single-block projection holds q, k, v (72 rows each) then the 288-row MLP input
    assert upstream["single_blocks.2.linear1.weight"].shape == (72 * 3 + 288, 72)
    to_k = state["single_transformer_blocks.2.attn.to_k.weight"]
    assert torch.equal(upstream["single_blocks.2.linear1.weight"][72:144], to_k)
    # final adaLN: upstream (shift, scale) = diffusers (scale, shift) swapped
    assert torch.equal(upstream["final_layer.adaLN_modulation.1.bias"][:72], state["norm_out.linear.bias"][72:])

    config = transformer_config_from_state_dict(upstream)
    assert (config["num_attention_heads"], config["attention_head_dim"], config["num_layers"],
            config["num_single_layers"], config["num_refiner_layers"], config["text_embed_dim"],
            config["pooled_projection_dim"], config["rope_axes_dim"]) == (3, 24, 2, 3, 2, 40, 20, (4, 10, 10))
    rebuilt = HunyuanVideoTransformer3DModel(**config)
    rebuilt.load_state_dict(convert_hunyuan_video_transformer(upstream), strict=True)


def test_rope_axes_rule():
    assert [rope_axes_dim(d) for d in (16, 24, 64, 128)] == [(4, 6, 6), (4, 10, 10), (8, 28, 28), (16, 56, 56)]
    with pytest.raises(CheckpointError):
        rope_axes_dim(18)


def test_unknown_transformer_key_is_a_checkpoint_error():
    state = convert_to_upstream(build_tiny_components(num_layers=1, num_single_layers=1)["transformer"].state_dict())
    state["double_blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="double_blocks.0.extra"):
        convert_hunyuan_video_transformer(state)


# --- both layouts ----------------------------------------------------------------------------------

def test_upstream_and_diffusers_layouts_load_identically(ckpts):
    upstream, diffusers = ckpts
    a = load_hunyuan_video_components(upstream / DIT_WEIGHT, upstream, **FP32)
    # the diffusers folder is found through either argument
    b = load_hunyuan_video_components(diffusers, "no-such-model-base", **FP32)
    c = load_hunyuan_video_components("no-such-file.pt", diffusers, **FP32)
    assert (a.layout, b.layout, c.layout) == ("upstream", "diffusers", "diffusers")
    assert (a.transformer.config.num_layers, a.transformer.config.num_single_layers) == (20, 40)
    assert a.transformer.config.attention_head_dim == 16 and a.transformer.config.rope_axes_dim == (4, 6, 6)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert_same_tensors(getattr(a, name).state_dict(), getattr(b, name).state_dict())
    assert_same_tensors(b.transformer.state_dict(), c.transformer.state_dict())
    # same seed -> the very weights the in-memory builder makes
    built = build_tiny_components()["transformer"].state_dict()
    assert_same_tensors({k: v.float() for k, v in built.items()}, a.transformer.state_dict())

    generator = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 2, 8, 8, generator=generator),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 7, 48, generator=generator),
        encoder_attention_mask=torch.ones(1, 7),
        pooled_projections=torch.randn(1, 24, generator=generator),
        guidance=torch.tensor([6000.0]),
    )
    with torch.no_grad():
        out_a = a.transformer(**inputs).sample
        out_b = b.transformer(**inputs).sample
    assert out_a.shape == (1, 16, 2, 8, 8) and torch.isfinite(out_a).all()
    assert torch.equal(out_a, out_b)
    assert a.tokenizer.padding_side == "right" and b.tokenizer.padding_side == "right"


def test_tiny_pipeline_runs_and_template_crop_lands_on_the_prompt(ckpts):
    upstream, _ = ckpts
    parts = load_hunyuan_video_components(upstream / DIT_WEIGHT, upstream, **FP32)
    prompt = "A cat walks on the grass, realistic style."
    ids = parts.tokenizer(DEFAULT_PROMPT_TEMPLATE["template"].format(prompt)).input_ids
    prompt_ids = parts.tokenizer(prompt + "<|eot_id|>", add_special_tokens=False).input_ids
    assert DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95 and ids[95:] == prompt_ids

    pipe = HunyuanVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=parts.transformer,
                                vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2)
    embeds, pooled, mask = pipe.encode_prompt(prompt, device="cpu")[:3]
    other = pipe.encode_prompt("A dog runs on a beach at night.", device="cpu")[0]
    assert embeds.shape == (1, 256, 48) and pooled.shape == (1, 24)
    assert int(mask.sum()) == len(prompt_ids) and not torch.allclose(embeds, other)

    video = pipe(prompt, height=64, width=64, num_frames=5, num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 5, 3, 64, 64) and torch.isfinite(video).all()


# --- fp8 -------------------------------------------------------------------------------------------

def test_fp8_weights_are_dequantised(ckpts):
    upstream, _ = ckpts
    fp8_weight = upstream / DIT_WEIGHT.replace(".pt", "_fp8.pt")
    scales = torch.load(str(fp8_weight).replace(".pt", "_map.pt"), weights_only=True)
    # every Linear of the 20 double blocks (10 each) and 40 single blocks (3 each), nothing else
    assert len(scales) == 20 * 10 + 40 * 3 and "final_layer.linear" not in scales
    assert "double_blocks.0.img_attn_qkv" in scales and "single_blocks.39.linear1" in scales

    reference = load_hunyuan_video_components(upstream / DIT_WEIGHT, upstream).transformer.state_dict()
    loaded = load_hunyuan_video_components(fp8_weight, upstream, use_fp8=True).transformer.state_dict()
    reference, loaded = convert_to_upstream(reference), convert_to_upstream(loaded)  # compare per fp8 tensor
    assert sorted(reference) == sorted(loaded)
    for key, weight in reference.items():
        module = key.rpartition(".")[0]
        assert loaded[key].dtype == torch.bfloat16
        if module in scales and key.endswith(".weight"):
            # e4m3 keeps 3 mantissa bits (relative error <= 2^-4), bf16 adds 2^-8; subnormals near zero
            scale = scales[module].item()
            torch.testing.assert_close(loaded[key].float(), weight.float(), rtol=2**-4 + 2**-7, atol=scale * 2**-8)
            assert not torch.equal(loaded[key], weight), key
        else:
            assert torch.equal(loaded[key], weight), key

    with pytest.raises(CheckpointError, match="--use-fp8"):
        load_hunyuan_video_components(fp8_weight, upstream)


def test_fp8_flag_on_a_bf16_file(ckpts, tmp_path):
    upstream = shutil.copytree(ckpts[0], tmp_path / "ckpts")
    fp8_map = upstream / DIT_WEIGHT.replace(".pt", "_fp8_map.pt")
    shutil.copy(fp8_map, upstream / DIT_WEIGHT.replace(".pt", "_map.pt"))
    with pytest.raises(CheckpointError, match="_map.pt: 'double_blocks.0.img_mod.linear.weight' is torch.bfloat16"):
        load_hunyuan_video_components(upstream / DIT_WEIGHT, upstream, use_fp8=True)


def test_transformer_weights_are_not_copied(ckpts):
    # 25 GB checkpoints must not be held twice: split projections stay views of the fused tensors.
    upstream, _ = ckpts
    attn = load_hunyuan_video_components(upstream / DIT_WEIGHT, upstream).transformer.transformer_blocks[3].attn
    assert attn.to_q.weight.device.type == "cpu" and attn.to_q.weight.dtype == torch.bfloat16
    assert attn.to_q.weight.untyped_storage().data_ptr() == attn.to_v.weight.untyped_storage().data_ptr()


# --- VAE -------------------------------------------------------------------------------------------

# vae/config.json of the released checkpoint (fields as listed in docs: upstream-compat.md)
REAL_UPSTREAM_VAE_CONFIG = {
    "_class_name": "AutoencoderKLCausal3D",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlockCausal3D"] * 4,
    "in_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "sample_tsize": 64,
    "up_block_types": ["UpDecoderBlockCausal3D"] * 4,
    "time_compression_ratio": 4,
    "mid_block_add_attention": True,
}


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}  # drops diffusers' bookkeeping entries


def test_real_vae_config_translation():
    kwargs = vae_kwargs_from_upstream_config(REAL_UPSTREAM_VAE_CONFIG)
    assert kwargs == {
        "in_channels": 3, "out_channels": 3, "latent_channels": 16,
        "down_block_types": ("HunyuanVideoDownBlock3D",) * 4, "up_block_types": ("HunyuanVideoUpBlock3D",) * 4,
        "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32,
        "scaling_factor": 0.476986, "spatial_compression_ratio": 8, "temporal_compression_ratio": 4,
        "mid_block_add_attention": True,
    }
    # diffusers' defaults are the released VAE: the translated config must build the same model
    with init_empty_weights():
        translated, default = AutoencoderKLHunyuanVideo(**kwargs), AutoencoderKLHunyuanVideo()
    assert _public(translated.config) == _public(default.config)
    with pytest.raises(CheckpointError, match="AutoencoderKLCausal3D"):
        vae_kwargs_from_upstream_config({**REAL_UPSTREAM_VAE_CONFIG, "_class_name": "AutoencoderKL"})


def test_wrapped_and_prefixed_vae_weights(ckpts, tmp_path):
    upstream = shutil.copytree(ckpts[0], tmp_path / "ckpts")
    weights = upstream / "hunyuan-video-t2v-720p/vae/pytorch_model.pt"
    plain = torch.load(weights, weights_only=True)
    torch.save({"state_dict": {f"vae.{k}": v for k, v in plain.items()}}, weights)
    vae = load_hunyuan_video_components(upstream / DIT_WEIGHT, upstream, **FP32).vae
    assert_same_tensors(vae.state_dict(), plain)


# --- errors ----------------------------------------------------------------------------------------

def _remove(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("case, broken, expected", [
    ("missing dit weight", DIT_WEIGHT, DIT_WEIGHT),
    ("missing vae config", "hunyuan-video-t2v-720p/vae/config.json", "vae/config.json"),
    ("missing vae weights", "hunyuan-video-t2v-720p/vae/pytorch_model.pt", "vae/pytorch_model.pt"),
    ("missing text encoder", "text_encoder", "text_encoder/config.json"),
    ("missing text encoder 2", "text_encoder_2", "text_encoder_2/config.json"),
    ("missing fp8 map", DIT_WEIGHT.replace(".pt", "_fp8_map.pt"), "_fp8_map.pt"),
    ("load key", None, "mp_rank_00_model_states.pt has no 'ema' entry"),
    ("not a weights file", "garbage", "mp_rank_00_model_states.pt as a PyTorch weights file"),
    ("a pickle reader's IndexError", "garbage pickle", "mp_rank_00_model_states.pt as a PyTorch weights file"),
    ("vae config of the wrong type", "vae config list", "vae/config.json: expected a JSON object"),
    ("vae config that does not fit", "vae norm groups", "vae/config.json does not describe a valid VAE"),
])
def test_each_broken_file_has_its_own_error(ckpts, tmp_path, case, broken, expected):
    upstream = shutil.copytree(ckpts[0], tmp_path / "ckpts")
    dit_weight, options = upstream / DIT_WEIGHT, {}
    if case == "missing fp8 map":
        dit_weight, options = upstream / DIT_WEIGHT.replace(".pt", "_fp8.pt"), {"use_fp8": True}
    if case == "load key":
        options = {"load_key": "ema"}
    elif case == "not a weights file":
        dit_weight.write_bytes(b"not a checkpoint")
    elif broken == "garbage pickle":
        dit_weight.write_bytes(b"this is not a checkpoint\x00\xff\xfe garbage" * 10)
    elif broken.startswith("vae "):
        config_path = upstream / "hunyuan-video-t2v-720p/vae/config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps([config] if broken == "vae config list" else {**config, "norm_num_groups": 3}))
    else:
        _remove(upstream / broken)
    with pytest.raises(CheckpointError) as err:
        load_hunyuan_video_components(dit_weight, upstream, **options)
    message = str(err.value)
    assert expected in message and str(upstream) in message and "\n" not in message, message


def test_missing_diffusers_component(ckpts, tmp_path):
    folder = shutil.copytree(ckpts[1], tmp_path / "diffusers")
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(CheckpointError, match="tokenizer_2"):
        load_hunyuan_video_components("unused.pt", folder)
    with pytest.raises(CheckpointError, match="--use-fp8"):
        load_hunyuan_video_components("unused.pt", ckpts[1], use_fp8=True)
