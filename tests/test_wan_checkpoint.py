"""Wan2.1 checkpoint loading (upstream and diffusers layouts), key mappings and the tiny-checkpoint writer."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file

from delta_cache.errors import CheckpointError, UserInputError
from delta_cache.models.wan import keys
from delta_cache.models.wan.checkpoint import load_wan_components
from delta_cache.models.wan.tiny import write_tiny_checkpoint
from delta_cache.models.wan.tiny import build_tiny_modules
from script_loader import load_script

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_tiny_checkpoint.py"
NUM_LAYERS = 3
PROMPT = "A small red cat walking on the beach at night, 4K, slow motion."


@pytest.fixture(scope="session")
def reference():
    """The modules the tiny writer builds for seed 0 (what every written layout must load back to)."""
    return build_tiny_modules(num_layers=NUM_LAYERS, seed=0)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_ckpts")
    return {
        "upstream": write_tiny_checkpoint(root / "upstream", layout="upstream", num_layers=NUM_LAYERS),
        "sharded": write_tiny_checkpoint(root / "sharded", layout="upstream", num_layers=NUM_LAYERS, shards=3),
        "diffusers": write_tiny_checkpoint(root / "diffusers", layout="diffusers", num_layers=NUM_LAYERS),
        "diffusers_i2v": write_tiny_checkpoint(root / "diffusers_i2v", layout="diffusers", num_layers=2, i2v=True),
        "upstream_i2v": write_tiny_checkpoint(root / "upstream_i2v", layout="upstream", num_layers=2, i2v=True),
        "upstream_flf2v": write_tiny_checkpoint(root / "upstream_flf2v", layout="upstream", num_layers=2, flf2v=True),
        "diffusers_flf2v": write_tiny_checkpoint(root / "diffusers_flf2v", layout="diffusers", num_layers=2,
                                                 flf2v=True),
    }


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / "ckpt"))


def _transformer_output(transformer) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 2, 8, 8, generator=gen)
    text = torch.randn(1, 7, 32, generator=gen)
    with torch.no_grad():
        return transformer(latents, timestep=torch.tensor([700]), encoder_hidden_states=text, return_dict=False)[0]


def _assert_same_state_dict(module, expected_module):
    got, expected = module.state_dict(), expected_module.state_dict()
    assert got.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, different[:5]


# --- key mappings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["t2v", "i2v", "flf2v"])
def test_transformer_keys_invert_diffusers_converter(variant):
    i2v = variant != "t2v"
    state_dict = build_tiny_modules(num_layers=12, **({variant: True} if i2v else {}))["transformer"].state_dict()
    upstream = keys.transformer_to_upstream(state_dict)
    # Names of the released Wan2.1 files (upstream-compat.md); upstream norm2 has no weights.
    expected_names = {"head.modulation", "head.head.weight", "time_projection.1.weight", "text_embedding.2.bias",
                      "blocks.11.modulation", "blocks.11.norm3.weight", "blocks.10.self_attn.o.weight",
                      "blocks.0.cross_attn.norm_k.weight", "blocks.0.ffn.2.bias"}
    if i2v:
        expected_names |= {"img_emb.proj.4.weight", "blocks.0.cross_attn.k_img.weight", "blocks.0.cross_attn.norm_k_img.weight"}
    assert ("img_emb.emb_pos" in upstream) == (variant == "flf2v")  # flf2v's first/last-frame image positions
    assert expected_names <= upstream.keys()
    assert not any(".norm2." in k for k in upstream)

    back = keys.transformer_from_upstream(upstream)
    assert back.keys() == state_dict.keys()
    assert all(back[k] is state_dict[k] for k in state_dict)


def test_clip_keys_round_trip():
    encoder = build_tiny_modules(num_layers=1, i2v=True)["image_encoder"]
    state_dict = encoder.state_dict()
    upstream = keys.clip_visual_to_upstream(state_dict)
    # Names in the released open-clip file (Wan's clip.py); q/k/v are one fused projection there.
    expected_names = {"visual.cls_embedding", "visual.pos_embedding", "visual.patch_embedding.weight",
                      "visual.pre_norm.bias", "visual.post_norm.weight", "visual.transformer.1.attn.to_qkv.weight",
                      "visual.transformer.0.attn.proj.bias", "visual.transformer.0.norm2.weight",
                      "visual.transformer.1.mlp.2.bias"}
    assert expected_names <= upstream.keys()
    assert not any("q_proj" in k or "k_proj" in k for k in upstream)
    width = encoder.config.hidden_size
    assert upstream["visual.transformer.0.attn.to_qkv.weight"].shape == (3 * width, width)
    assert upstream["visual.cls_embedding"].shape == (1, 1, width)

    upstream["textual.token_embedding.weight"] = torch.zeros(2, 2)  # the text tower is dropped
    back = keys.clip_visual_from_upstream(upstream)
    assert back.keys() == state_dict.keys()
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)
    with pytest.raises(KeyError, match="visual.transformer.0.attn.rope"):
        keys.clip_visual_from_upstream({"visual.transformer.0.attn.rope": torch.zeros(1)})


def _wan_image_features(weights: dict, pixels: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Wan's image features computed straight from the upstream file's tensors, written from the architecture
    (pre-norm ViT, fused q/k/v, exact GELU, every block but the last), independent of transformers."""
    def w(name):
        return weights["visual." + name]

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], w(name + ".weight"), w(name + ".bias"), eps=1e-5)

    patch = w("patch_embedding.weight")
    x = F.conv2d(pixels, patch, stride=patch.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([w("cls_embedding").expand(len(x), -1, -1), x], dim=1) + w("pos_embedding")
    x = norm(x, "pre_norm")
    num_blocks = len({k.split(".")[2] for k in weights if k.startswith("visual.transformer.")})
    for i in range(num_blocks - 1):
        block = f"transformer.{i}."
        qkv = F.linear(norm(x, block + "norm1"), w(block + "attn.to_qkv.weight"), w(block + "attn.to_qkv.bias"))
        q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (batch, heads, tokens, d)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + F.linear(attended, w(block + "attn.proj.weight"), w(block + "attn.proj.bias"))
        hidden = F.gelu(F.linear(norm(x, block + "norm2"), w(block + "mlp.0.weight"), w(block + "mlp.0.bias")))
        x = x + F.linear(hidden, w(block + "mlp.2.weight"), w(block + "mlp.2.bias"))
    return x


def test_upstream_clip_file_gives_wans_image_features(ckpts):
    components = load_wan_components(ckpts["upstream_i2v"], task="i2v-14B")
    encoder = components.image_encoder
    weights = torch.load(ckpts["upstream_i2v"] / keys.CLIP_FILE, weights_only=True)
    size = encoder.config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # what the pipeline reads
        expected = _wan_image_features(weights, pixels, num_heads=encoder.config.hidden_size // 80)
    assert got.shape == (2, (size // encoder.config.patch_size) ** 2 + 1, encoder.config.hidden_size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_i2v_layouts_load_the_same_model(ckpts, tmp_path):
    from PIL import Image

    upstream = load_wan_components(ckpts["upstream_i2v"], task="i2v-14B")
    # A diffusers folder's processor in CLIP's usual style (short side resized, centre crop) is read as
    # upstream's preprocessing all the same: the front end is upstream's.
    folder = _copy(ckpts["diffusers_i2v"], tmp_path)
    config_path = folder / "image_processor" / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config.update(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True)
    config_path.write_text(json.dumps(config))
    diffusers = load_wan_components(folder, task="i2v-14B")
    for part in ("transformer", "image_encoder"):
        _assert_same_state_dict(getattr(upstream, part), getattr(diffusers, part))
    # Upstream squashes the whole image to the encoder's square size (no crop): a 4:3 image keeps its edges.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    pixels = upstream.image_processor(images=image, return_tensors="pt")["pixel_values"]
    size = upstream.image_encoder.config.image_size
    assert pixels.shape == (1, 3, size, size)
    torch.testing.assert_close(pixels, diffusers.image_processor(images=image, return_tensors="pt")["pixel_values"])
    mean = torch.tensor(upstream.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(upstream.image_processor.image_std).view(3, 1, 1)
    squashed = torch.from_numpy(np.array(image.resize((size, size), Image.BICUBIC))).permute(2, 0, 1) / 255
    torch.testing.assert_close(pixels[0], (squashed - mean) / std, atol=0.02, rtol=0)


def test_vae_keys_invert_diffusers_converter(reference):
    state_dict = reference["vae"].state_dict()
    upstream = keys.vae_to_upstream(state_dict)
    expected_names = {"conv1.weight", "conv2.bias", "encoder.conv1.weight", "encoder.head.2.weight",
                      "encoder.downsamples.2.resample.1.weight", "encoder.downsamples.5.time_conv.weight",
                      "encoder.middle.1.to_qkv.weight", "decoder.middle.2.residual.6.weight",
                      "decoder.upsamples.3.time_conv.weight", "decoder.upsamples.4.shortcut.weight",
                      "decoder.upsamples.14.residual.0.gamma", "decoder.head.0.gamma"}
    assert expected_names <= upstream.keys()
    assert "encoder.downsamples.2.time_conv.weight" not in upstream  # first level: no temporal downsample

    back = convert_wan_vae_to_diffusers(dict(upstream))
    assert back.keys() == state_dict.keys()
    assert all(back[k] is state_dict[k] for k in state_dict)


def _t5_output(text_encoder, tokenizer):
    batch = tokenizer([PROMPT], padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return text_encoder(batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state


def test_t5_mapping_loads_strict_and_matches_outputs(reference, ckpts, tmp_path):
    upstream = keys.t5_to_upstream(reference["text_encoder"].state_dict())
    assert {"token_embedding.weight", "norm.weight", "blocks.1.pos_embedding.embedding.weight",
            "blocks.0.ffn.gate.0.weight", "blocks.0.ffn.fc1.weight", "blocks.0.attn.o.weight"} <= upstream.keys()

    loaded = load_wan_components(ckpts["upstream"], task="t2v-14B").text_encoder
    config, ref_config = loaded.config, reference["text_encoder"].config
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets"):
        assert getattr(config, name) == getattr(ref_config, name), name
    expected = _t5_output(reference["text_encoder"], reference["tokenizer"])
    assert torch.equal(_t5_output(loaded, reference["tokenizer"]), expected)

    # Negative control: a file with the gate and fc1 projections swapped must give other outputs.
    ckpt = _copy(ckpts["upstream"], tmp_path)
    swapped = torch.load(ckpt / keys.T5_FILE, weights_only=True)
    swapped["blocks.0.ffn.gate.0.weight"], swapped["blocks.0.ffn.fc1.weight"] = (
        swapped["blocks.0.ffn.fc1.weight"], swapped["blocks.0.ffn.gate.0.weight"])
    torch.save(swapped, ckpt / keys.T5_FILE)
    wrong = load_wan_components(ckpt, task="t2v-14B").text_encoder
    assert not torch.allclose(_t5_output(wrong, reference["tokenizer"]), expected)


def test_t5_block_follows_upstream_semantics(ckpts):
    """One encoder block computed by hand from the upstream-named tensors, in upstream's formulas:
    x += o(softmax(q k^T + pos_bias) v) on norm1(x); x += fc2(gelu(gate.0(h)) * fc1(h)) with h = norm2(x)."""
    upstream = torch.load(ckpts["upstream"] / keys.T5_FILE, weights_only=True)
    block = load_wan_components(ckpts["upstream"], task="t2v-14B").text_encoder.encoder.block[1]
    w = {k[len("blocks.1."):]: v for k, v in upstream.items() if k.startswith("blocks.1.")}
    heads = w["pos_embedding.embedding.weight"].shape[1]

    def rms_norm(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def split_heads(x):
        return x.view(1, x.shape[1], heads, -1).transpose(1, 2)

    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(2))
    h = rms_norm(x, w["norm1.weight"])
    q, k, v = (split_heads(h @ w[f"attn.{n}.weight"].T) for n in "qkv")
    bias = block.layer[0].SelfAttention.compute_bias(6, 6)  # bucketing is transformers'; its table is pos_embedding
    attn = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v
    x_attn = x + attn.transpose(1, 2).reshape(1, 6, -1) @ w["attn.o.weight"].T
    h = rms_norm(x_attn, w["norm2.weight"])
    gate = torch.nn.functional.gelu(h @ w["ffn.gate.0.weight"].T, approximate="tanh")
    expected = x_attn + (gate * (h @ w["ffn.fc1.weight"].T)) @ w["ffn.fc2.weight"].T

    with torch.no_grad():
        got = block.layer[1](block.layer[0](x)[0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --- layouts ---------------------------------------------------------------------------------------

def test_all_layouts_load_the_same_weights(reference, ckpts):
    expected_output = _transformer_output(reference["transformer"])
    expected_ids = reference["tokenizer"](PROMPT).input_ids
    assert expected_ids[-1] == 1 and 2 not in expected_ids  # eos appended; plain English has no <unk>
    for name in ("upstream", "sharded", "diffusers"):
        components = load_wan_components(ckpts[name], task="t2v-14B")
        assert components.layout == ("diffusers" if name == "diffusers" else "upstream")
        for part in ("transformer", "vae", "text_encoder"):
            _assert_same_state_dict(getattr(components, part), reference[part])
        output = _transformer_output(components.transformer)
        if name == "diffusers":
            # from_pretrained keeps the weights in unaligned (mmapped) memory, where the CPU matmul
            # kernels round differently in the last bit; the weights themselves are equal (above).
            torch.testing.assert_close(output, expected_output, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(output, expected_output)
        assert components.tokenizer(PROMPT).input_ids == expected_ids
        assert components.image_encoder is None and components.image_processor is None


def test_sharded_files_split_the_blocks(ckpts):
    index = json.loads((ckpts["sharded"] / keys.TRANSFORMER_INDEX_FILE).read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert shard_names == [keys.shard_file_name(i, 3) for i in (1, 2, 3)]
    for shard in shard_names:
        assert set(load_file(ckpts["sharded"] / shard)) == {k for k, f in index["weight_map"].items() if f == shard}


def test_seed_changes_weights_and_same_seed_repeats():
    first, again, other = (build_tiny_modules(num_layers=1, seed=s)["transformer"].state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["proj_out.weight"], other["proj_out.weight"])


@pytest.mark.parametrize("task", ["t2v-14B", "t2v-1.3B", "t2i-14B"])
def test_dimensions_come_from_the_files_not_the_task(ckpts, task):
    for name in ("upstream", "diffusers"):
        components = load_wan_components(ckpts[name], task=task)
        config = components.transformer.config
        assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (NUM_LAYERS, 2, 12)
        assert (config.text_dim, config.ffn_dim, tuple(config.patch_size)) == (32, 32, (1, 2, 2))
        assert components.vae.config.base_dim == 2
        assert components.text_encoder.config.d_model == 32


def test_dtypes_match_between_layouts(ckpts):
    upstream = load_wan_components(ckpts["upstream"], task="t2v-14B", dtype=torch.bfloat16)
    diffusers = load_wan_components(ckpts["diffusers"], task="t2v-14B", dtype=torch.bfloat16)
    for part in ("transformer", "vae", "text_encoder"):
        _assert_same_state_dict(getattr(upstream, part), getattr(diffusers, part))
        dtypes = {k: v.dtype for k, v in getattr(upstream, part).state_dict().items()}
        assert dtypes == {k: v.dtype for k, v in getattr(diffusers, part).state_dict().items()}
    assert upstream.transformer.proj_out.weight.dtype == torch.bfloat16
    assert upstream.transformer.scale_shift_table.dtype == torch.float32  # diffusers keeps it in fp32
    assert upstream.vae.decoder.conv_in.weight.dtype == torch.float32  # vae_dtype default


def test_i2v_diffusers_layout_and_task_checks(ckpts):
    components = load_wan_components(ckpts["diffusers_i2v"], task="i2v-14B")
    assert components.image_encoder is not None and components.image_processor is not None
    assert components.transformer.config.image_dim == components.image_encoder.config.hidden_size
    with pytest.raises(CheckpointError, match="image-to-video"):
        load_wan_components(ckpts["diffusers_i2v"], task="t2v-14B")
    with pytest.raises(CheckpointError, match="image_encoder"):
        load_wan_components(ckpts["diffusers"], task="i2v-14B")
    with pytest.raises(CheckpointError, match=r"checkpoint file missing: .*models_clip_open-clip-xlm-roberta-large"):
        load_wan_components(ckpts["upstream"], task="i2v-14B")
    with pytest.raises(CheckpointError, match="image-to-video"):
        load_wan_components(ckpts["upstream_i2v"], task="t2v-14B")
    with pytest.raises(CheckpointError, match="holds a model without VACE control blocks, which does not fit --task vace-14B"):
        load_wan_components(ckpts["upstream"], task="vace-14B")
    with pytest.raises(UserInputError, match="unknown Wan task"):
        load_wan_components(ckpts["upstream"], task="vace-2B")


def test_flf2v_layouts_and_task_checks(ckpts, tmp_path):
    upstream = load_wan_components(ckpts["upstream_flf2v"], task="flf2v-14B")
    diffusers = load_wan_components(ckpts["diffusers_flf2v"], task="flf2v-14B")
    for part in ("transformer", "image_encoder"):
        _assert_same_state_dict(getattr(upstream, part), getattr(diffusers, part))
    # one position per CLIP token (class token + patches) of each of the two frames, loaded from img_emb.emb_pos
    clip = upstream.image_encoder.config
    positions = upstream.transformer.condition_embedder.image_embedder.pos_embed
    assert positions.shape == (1, 2 * ((clip.image_size // clip.patch_size) ** 2 + 1), clip.hidden_size)
    written = load_file(ckpts["upstream_flf2v"] / "diffusion_pytorch_model.safetensors")["img_emb.emb_pos"]
    assert torch.equal(positions, written) and written.abs().sum() > 0
    for ckpt in ("upstream_flf2v", "diffusers_flf2v"):
        with pytest.raises(CheckpointError, match="holds a first-last-frame-to-video model.*does not fit --task i2v-14B"):
            load_wan_components(ckpts[ckpt], task="i2v-14B")
    for ckpt in ("upstream_i2v", "diffusers_i2v"):
        with pytest.raises(CheckpointError, match="holds a one-image image-to-video model.*does not fit --task flf2v"):
            load_wan_components(ckpts[ckpt], task="flf2v-14B")
    ckpt = _copy(ckpts["upstream_flf2v"], tmp_path)
    _tiny_clip_file(ckpt / keys.CLIP_FILE, width=160, heads=2, image_size=48)  # 37 tokens a frame, not 17
    with pytest.raises(CheckpointError, match=r"models_clip.*two frames give 74 image tokens, the transformer's "
                                              r"img_emb.emb_pos has 34 positions"):
        load_wan_components(ckpt, task="flf2v-14B")
    with pytest.raises(CheckpointError, match="missing: .*models_clip.*needed for flf2v-14B"):
        load_wan_components(ckpts["upstream"], task="flf2v-14B")
    with pytest.raises(CheckpointError, match="image-to-video model.*does not fit --task t2v-14B"):
        load_wan_components(ckpts["upstream_flf2v"], task="t2v-14B")


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, relpath", [
    ("upstream", "config.json"),
    ("upstream", "diffusion_pytorch_model.safetensors"),
    ("sharded", "diffusion_pytorch_model-00002-of-00003.safetensors"),
    ("sharded", "diffusion_pytorch_model.safetensors.index.json"),
    ("upstream", "Wan2.1_VAE.pth"),
    ("upstream", "models_t5_umt5-xxl-enc-bf16.pth"),
    ("upstream", "google/umt5-xxl"),
    ("diffusers", "transformer"),
    ("diffusers", "vae"),
    ("diffusers", "text_encoder"),
    ("diffusers", "tokenizer"),
])
def test_each_missing_file_has_its_own_error(ckpts, tmp_path, layout, relpath):
    ckpt = _copy(ckpts[layout], tmp_path)
    target = ckpt / relpath
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError) as err:
        load_wan_components(ckpt, task="t2v-14B")
    assert str(target) in str(err.value) and "missing" in str(err.value)
    assert "\n" not in str(err.value)


def _edit_config(ckpt: Path, **changes):
    path = ckpt / keys.CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


def test_malformed_config_json(ckpts, tmp_path):
    ckpt = _copy(ckpts["upstream"], tmp_path)
    (ckpt / keys.CONFIG_FILE).write_text('{"dim": 24,')
    with pytest.raises(CheckpointError, match=r"malformed .*config\.json: not valid JSON"):
        load_wan_components(ckpt, task="t2v-14B")

    (ckpt / keys.CONFIG_FILE).write_text(json.dumps({"dim": 24, "ffn_dim": 32, "freq_dim": 256, "in_dim": 16,
                                                     "num_heads": 2, "num_layers": NUM_LAYERS, "out_dim": 16}))
    load_wan_components(ckpt, task="t2v-14B")  # the optional keys (eps, text_len, model_type) may be absent
    for heads in (None, 0):
        _edit_config(ckpt, num_heads=heads)
        with pytest.raises(CheckpointError, match=r"config\.json: missing or not a positive integer: num_heads"):
            load_wan_components(ckpt, task="t2v-14B")
    _edit_config(ckpt, num_heads=2, eps="tiny")
    with pytest.raises(CheckpointError, match=r"config\.json: eps must be a positive number, got 'tiny'"):
        load_wan_components(ckpt, task="t2v-14B")


@pytest.mark.parametrize("change, message", [
    ({"dim": 48, "num_heads": 4}, "patch_embedding.weight"),
    ({"ffn_dim": 64}, "ffn_dim=64"),
    ({"num_layers": 40}, "num_layers=40 but it has 3 blocks"),
    ({"out_dim": 12}, "head.head.weight"),
])
def test_config_json_disagreeing_with_tensors(ckpts, tmp_path, change, message):
    ckpt = _copy(ckpts["upstream"], tmp_path)
    _edit_config(ckpt, **change)
    with pytest.raises(CheckpointError, match=r"config\.json disagrees with .*safetensors.*" + message):
        load_wan_components(ckpt, task="t2v-14B")


def test_wrong_keys_and_unreadable_files(ckpts, tmp_path):
    ckpt = _copy(ckpts["upstream"], tmp_path)
    weights = load_file(ckpt / keys.TRANSFORMER_FILE)
    weights["blocks.0.extra.weight"] = torch.zeros(1)
    del weights["blocks.1.self_attn.norm_q.weight"]
    save_file(weights, ckpt / keys.TRANSFORMER_FILE)
    with pytest.raises(CheckpointError, match=r"missing blocks\.1\.attn1\.norm_q\.weight; unexpected blocks\.0\.extra"):
        load_wan_components(ckpt, task="t2v-14B")

    ckpt = _copy(ckpts["sharded"], tmp_path / "sharded")
    shard = ckpt / keys.shard_file_name(2, 3)
    shard.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=f"unreadable {shard}"):
        load_wan_components(ckpt, task="t2v-14B")

    vae = torch.load(ckpt / keys.VAE_FILE, weights_only=True)
    vae["decoder.conv1.weight"] = vae["decoder.conv1.weight"][:, :8]
    torch.save(vae, ckpt / keys.VAE_FILE)
    shard.unlink()
    shutil.copy(ckpts["sharded"] / shard.name, shard)
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth: weights do not match the AutoencoderKLWan .*size mismatch"):
        load_wan_components(ckpt, task="t2v-14B")

    (ckpt / keys.T5_FILE).write_bytes(b"garbage")
    (ckpt / keys.VAE_FILE).unlink()
    shutil.copy(ckpts["sharded"] / keys.VAE_FILE, ckpt / keys.VAE_FILE)
    with pytest.raises(CheckpointError, match=r"unreadable .*models_t5_umt5-xxl-enc-bf16\.pth"):
        load_wan_components(ckpt, task="t2v-14B")


GARBAGE = b"this is not a checkpoint\x00\xff\xfe garbage" * 10  # a pickle reader fails on it with IndexError


def test_garbage_and_incomplete_files_are_one_line(ckpts, tmp_path):
    ckpt = _copy(ckpts["upstream"], tmp_path)
    (ckpt / keys.VAE_FILE).write_bytes(GARBAGE)
    with pytest.raises(CheckpointError, match=r"unreadable .*Wan2\.1_VAE\.pth: expected a torch state dict"):
        load_wan_components(ckpt, task="t2v-14B")
    # a diffusers folder whose weights lack a tensor: from_pretrained would leave it at random initial values
    folder = Path(shutil.copytree(ckpts["diffusers"], tmp_path / "diffusers"))
    weights_file = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    del weights["blocks.0.attn1.norm_q.weight"]
    save_file(weights, weights_file)
    with pytest.raises(CheckpointError, match=r"transformer \(the Wan transformer\): the weights lack 1 of the "
                                              r"model's tensors, e.g. blocks\.0\.attn1\.norm_q\.weight"):
        load_wan_components(folder, task="t2v-14B")
    # a tokenizer folder without its vocabulary would load, knowing only its special tokens (the vocabulary
    # check behind it is tested on a diffusers folder in test_other_families.py)
    ckpt = _copy(ckpts["upstream"], tmp_path / "no_vocabulary")
    (ckpt / keys.TOKENIZER_DIR / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"umt5-xxl: it has no tokenizer.json or spiece.model"):
        load_wan_components(ckpt, task="t2v-14B")


def _tiny_clip_file(path: Path, width: int, heads: int, image_size: int = 32) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=width, intermediate_size=width, num_hidden_layers=2,
                                               num_attention_heads=heads, image_size=image_size, patch_size=8))
    torch.save(keys.clip_visual_to_upstream(encoder.state_dict()), path)


# --- real-size dims, from shapes alone (meta tensors: nothing is allocated) --------------------------------

def _released_clip_shapes() -> dict:
    """The visual tower of the released open-clip XLM-RoBERTa ViT-H/14 file, written from its architecture
    (width 1280, 32 blocks, mlp 4x, 224 px in 14 px patches, pre-norm without a patch bias, a 1280x1024 head)."""
    width, blocks = 1280, 32
    shapes = {"visual.cls_embedding": (1, 1, width), "visual.pos_embedding": (1, 1 + 16 * 16, width),
              "visual.patch_embedding.weight": (width, 3, 14, 14), "visual.head": (width, 1024),
              "log_scale": (), "textual.token_embedding.weight": (250002, 1024)}
    for norm in ("pre_norm", "post_norm"):
        shapes.update({f"visual.{norm}.weight": (width,), f"visual.{norm}.bias": (width,)})
    for i in range(blocks):
        block = f"visual.transformer.{i}."
        for name, shape in [("norm1.weight", (width,)), ("norm1.bias", (width,)), ("norm2.weight", (width,)),
                            ("norm2.bias", (width,)), ("attn.to_qkv.weight", (3 * width, width)),
                            ("attn.to_qkv.bias", (3 * width,)), ("attn.proj.weight", (width, width)),
                            ("attn.proj.bias", (width,)), ("mlp.0.weight", (4 * width, width)),
                            ("mlp.0.bias", (4 * width,)), ("mlp.2.weight", (width, 4 * width)), ("mlp.2.bias", (width,))]:
            shapes[block + name] = shape
    return shapes


def test_released_clip_file_dims_and_keys_at_real_size():
    from accelerate import init_empty_weights
    from transformers import CLIPVisionModel

    from delta_cache.models.wan import checkpoint

    shapes = _released_clip_shapes()
    config = checkpoint._upstream_clip_config(shapes, Path(keys.CLIP_FILE))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.image_size, config.patch_size, config.hidden_act) == (1280, 32, 16, 5120, 224, 14, "gelu")
    with init_empty_weights():
        model = CLIPVisionModel(config)
    converted = keys.clip_visual_from_upstream({k: torch.empty(v, device="meta") for k, v in shapes.items()})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = next(k for k in expected if k.endswith("embeddings.class_embedding"))[:-len("embeddings.class_embedding")]
    assert {prefix + k: tuple(v.shape) for k, v in converted.items()} == expected


@pytest.mark.parametrize("model_type, image_positions", [("i2v", None), ("flf2v", 514)])
def test_released_14b_image_transformer_dims_at_real_size(model_type, image_positions):
    # The released 14B image transformers (upstream config.json facts); their upstream tensor names and shapes
    # come from a meta WanTransformer3DModel through our inverse mapping (tested against diffusers' converter above).
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from delta_cache.models.wan import checkpoint

    released = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120,
                    pos_embed_seq_len=image_positions, rope_max_seq_len=1024)
    with init_empty_weights():
        model = WanTransformer3DModel(**released)
    shapes = {k: tuple(v.shape) for k, v in keys.transformer_to_upstream(model.state_dict()).items()}
    upstream_config = {"model_type": model_type, "dim": 5120, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36,
                       "num_heads": 40, "num_layers": 40, "out_dim": 16, "text_len": 512, "eps": 1e-6}
    derived = checkpoint._upstream_transformer_config(upstream_config, shapes, Path("config.json"),
                                                      Path("diffusion_pytorch_model.safetensors"))
    assert derived == released
    assert ("img_emb.emb_pos" in shapes) == (model_type == "flf2v")


def test_bad_clip_files(ckpts, tmp_path):
    ckpt = _copy(ckpts["upstream_i2v"], tmp_path)
    clip = ckpt / keys.CLIP_FILE
    _tiny_clip_file(clip, width=80, heads=1)
    with pytest.raises(CheckpointError, match=r"models_clip.*disagrees with the transformer: its image features are "
                                              r"80 wide, the transformer's img_emb expects 160"):
        load_wan_components(ckpt, task="i2v-14B")
    _tiny_clip_file(clip, width=96, heads=2)
    with pytest.raises(CheckpointError, match=r"models_clip.*96 wide, not a multiple of the 80-wide heads of ViT-H/14"):
        load_wan_components(ckpt, task="i2v-14B")
    shutil.copy(ckpt / keys.T5_FILE, clip)
    with pytest.raises(CheckpointError, match=r"models_clip.* has no tensor 'visual.cls_embedding'; is it the right file"):
        load_wan_components(ckpt, task="i2v-14B")
    weights = torch.load(ckpts["upstream_i2v"] / keys.CLIP_FILE, weights_only=True)
    weights["visual.transformer.0.attn.rope"] = torch.zeros(1)
    torch.save(weights, clip)
    with pytest.raises(CheckpointError, match=r"attn\.rope.*expected upstream Wan CLIP keys"):
        load_wan_components(ckpt, task="i2v-14B")
    clip.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"unreadable .*models_clip"):
        load_wan_components(ckpt, task="i2v-14B")


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_wan_components(tmp_path / "nope", task="t2v-14B")


# --- writer and CLI --------------------------------------------------------------------------------

def test_writer_rejects_bad_options(tmp_path):
    for options in ({"layout": "comfy"}, {"shards": 0}, {"shards": 2, "layout": "diffusers"},
                    {"shards": 5, "num_layers": 3}, {"head_dim": 9}, {"i2v": True, "flf2v": True}):
        with pytest.raises(UserInputError, match="tiny Wan checkpoint"):
            write_tiny_checkpoint(tmp_path / "out", **options)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserInputError, match="not empty"):
        write_tiny_checkpoint(tmp_path / "full", num_layers=1)


def test_cli_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run([sys.executable, str(SCRIPT), "--family", "wan", "--out", str(out), "--num_layers", "2",
                             "--shards", "2", "--seed", "5"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert keys.shard_file_name(2, 2) in result.stdout and keys.VAE_FILE in result.stdout
    components = load_wan_components(out, task="t2v-1.3B")
    _assert_same_state_dict(components.transformer, build_tiny_modules(num_layers=2, seed=5)["transformer"])


def test_cli_bad_arguments(tmp_path, capsys):
    script = load_script(SCRIPT)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--family", "nope", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--family", "wan", "--out", str(tmp_path / "y"), "--shards", "0"])
    assert "--shards: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="shards"):
        script.main(["--family", "wan", "--out", str(tmp_path / "y"), "--shards", "9", "--num_layers", "2"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    for family in ("wan", "hunyuan_video"):  # (both writers: the HunyuanVideo one wrote into it)
        with pytest.raises(UserInputError, match="is not empty"):
            script.main(["--family", family, "--out", str(tmp_path / "full")])


def test_a_tokenizer_folder_without_its_files_names_them(ckpts, tmp_path):
    ckpt = _copy(ckpts["upstream"], tmp_path)
    for path in (ckpt / "google" / "umt5-xxl").iterdir():
        path.unlink()
    with pytest.raises(CheckpointError, match=r"cannot load the tokenizer from .*umt5-xxl: it has no tokenizer.json "
                                              r"or spiece.model$"):
        load_wan_components(ckpt, task="t2v-14B")


def test_a_malformed_model_index_is_refused(ckpts, tmp_path):
    ckpt = _copy(ckpts["diffusers"], tmp_path)
    (ckpt / "model_index.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"model_index\.json: cannot read it as JSON"):
        load_wan_components(ckpt, task="t2v-14B")
