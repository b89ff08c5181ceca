"""The offline tiny chat model: deterministic, complete, and loadable by transformers."""

from __future__ import annotations

import hashlib
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from cpu_engine.tiny_model import REQUIRED_FILES, create_tiny_model

pytestmark = pytest.mark.engine  # builds the tiny model with transformers


def digests(path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


def test_two_creations_write_identical_bytes(tiny_model_path, tmp_path):
    again = create_tiny_model(tmp_path / "again")
    assert set(REQUIRED_FILES) <= set(digests(again))
    assert digests(again) == digests(tiny_model_path)


def test_another_seed_gives_other_weights(tiny_model_path, tmp_path):
    other = create_tiny_model(tmp_path / "other", seed=1)
    assert digests(other)["model.safetensors"] != digests(tiny_model_path)["model.safetensors"]
    assert digests(other)["tokenizer.json"] == digests(tiny_model_path)["tokenizer.json"]


def test_it_skips_a_complete_folder(tiny_model_path):
    before = {f.name: f.stat().st_mtime_ns for f in tiny_model_path.iterdir()}
    messages = []
    create_tiny_model(tiny_model_path, log=messages.append)
    assert {f.name: f.stat().st_mtime_ns for f in tiny_model_path.iterdir()} == before
    assert messages == [f"Tiny model already present at {tiny_model_path}"]


def test_transformers_loads_it_and_renders_the_chat_template(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.model_type == "llama"
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert (
        rendered
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # Special tokens are single tokens, and ordinary text round-trips through the byte-level BPE.
    assert len(tokenizer("<|im_start|>", add_special_tokens=False)["input_ids"]) == 1
    text = "def f(x):\n    return x  # ünïcode"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    ids = tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 or out[0, -1] == tokenizer.eos_token_id


def test_the_tokenizer_config_names_a_class_transformers_4_knows(tiny_model_path):
    config = json.loads((tiny_model_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
