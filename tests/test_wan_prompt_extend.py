"""Wan2.1/generate.py --use_prompt_extend: a local LLM folder rewrites the prompt before the video models load
(here a tiny random Qwen2 built offline: its text is noise, the code path is the real one)."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from delta_cache.errors import UserInputError
from delta_cache.models.wan.prompt_extend import PromptExtension, extend_prompt
from delta_cache.models.wan.tiny import build_tiny_tokenizer, write_tiny_checkpoint
from script_loader import load_script

GENERATE = Path(__file__).resolve().parent.parent / "Wan2.1" / "generate.py"
CHAT_TEMPLATE = ("{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def write_tiny_llm(out: Path) -> Path:
    """A random two-layer Qwen2 causal LM with a chat-template tokenizer, saved as a local model folder. It
    samples 4-8 new tokens (an instruct model's generation config samples too)."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=1024))
    model.generation_config = GenerationConfig(do_sample=True, top_k=0, min_new_tokens=4, eos_token_id=1,
                                               pad_token_id=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-qwen")


def test_extension_is_seeded_and_leaves_the_prompt_alone_without_an_answer(llm, monkeypatch):
    extension = PromptExtension(model_dir=llm, target_lang="en")
    cpu = torch.device("cpu")
    first = extend_prompt("a red square moves left", extension, seed=3, device=cpu)
    assert first and first != "a red square moves left"
    assert extend_prompt("a red square moves left", extension, seed=3, device=cpu) == first
    assert extend_prompt("a red square moves left", extension, seed=4, device=cpu) != first
    # an empty answer falls back to the user's prompt, as upstream does
    monkeypatch.setattr(Qwen2ForCausalLM, "generate", lambda self, input_ids, **kwargs: input_ids)
    assert extend_prompt("a red square moves left", extension, seed=3, device=cpu) == "a red square moves left"


def test_front_end_generates_from_the_extended_prompt_and_names_the_file_after_it(llm, tmp_path, monkeypatch,
                                                                                    capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "wan", num_layers=2)
    (ckpt / "tiny_model.json").write_text(json.dumps({"native_size": {"width": 64, "height": 48, "num_frames": 5}}))
    monkeypatch.chdir(tmp_path)
    prompts = []
    from delta_cache.models.wan import pipeline

    original = pipeline.denoise

    def recording(pipe, **kwargs):
        prompts.append(kwargs["prompt"])
        return original(pipe, **kwargs)

    monkeypatch.setattr(pipeline, "denoise", recording)
    load_script(GENERATE).main(["--task", "t2v-1.3B", "--ckpt_dir", str(ckpt), "--prompt", "a dog runs",
                                "--sample_steps", "2", "--base_seed", "7", "--use_prompt_extend",
                                "--prompt_extend_model", str(llm), "--prompt_extend_target_lang", "en"])
    expected = extend_prompt("a dog runs", PromptExtension(llm, "en"), seed=7, device=torch.device("cpu"))
    assert prompts == [expected] and expected != "a dog runs"
    [video] = [p.name for p in tmp_path.glob("*.mp4")]
    # upstream names the file after the prompt it generated from (its args.prompt is replaced by the extension)
    formatted = expected.replace(" ", "_").replace("/", "_")[:50]
    assert video.startswith(f"t2v-1.3B_64*48_1_1_{formatted}_") and re.search(r"_\d{8}_\d{6}\.mp4$", video)


def test_prompt_extend_flag_errors(llm, tmp_path):
    generate_py = load_script(GENERATE)
    ckpt = write_tiny_checkpoint(tmp_path / "wan", num_layers=1)
    base = ["--size", "832*480", "--frame_num", "5", "--ckpt_dir", str(ckpt), "--use_prompt_extend"]
    cases = [
        (["--prompt_extend_method", "dashscope"], "dashscope calls an online API"),
        ([], "--use_prompt_extend needs --prompt_extend_model"),
        (["--prompt_extend_model", str(tmp_path)], "not a local model folder \\(no config.json\\)"),
        (["--task", "i2v-14B", "--image", str(tmp_path / "x.png"), "--prompt_extend_model", str(llm)],
         "not supported for i2v-14B"),
    ]
    for args, message in cases:
        with pytest.raises(UserInputError, match=message):
            generate_py.main(base + args)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserInputError, match="--prompt_extend_model .*broken: cannot load it"):
        generate_py.main(base + ["--prompt_extend_model", str(broken)])
    assert not list(tmp_path.glob("*.mp4"))


def test_a_model_without_chat_template_is_refused_before_its_weights_load(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    folder = write_tiny_llm(tmp_path / "base-llm")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in folder.glob("chat_template.*"):  # (newer tokenizers save the template in its own file)
        extra.unlink()

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(UserInputError, match="its tokenizer has no chat template"):
        extend_prompt("a dog runs", PromptExtension(folder, "en"), seed=1, device=torch.device("cpu"))
