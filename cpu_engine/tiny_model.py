"""A tiny chat model that Berth can create offline, for hosts with neither a GPU nor internet.

``create_tiny_model(path)`` writes a Llama-architecture causal LM with random weights (about 4M
parameters, 16 MB) and a byte-level BPE tokenizer trained here on CPython's own standard library,
in the standard Hugging Face folder layout that both transformers and vLLM load. Its output is
gibberish; it exists so the whole serving path (engine, gateway, metering, billing) runs for real
on a laptop. The recipe and its measurements are in docs/decisions/0001-cpu-engine.md.

Same seed, same Python version: same bytes. The tokenizer's training text is a fixed, sorted list
of stdlib files, and the weights come from a seeded generator.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

BOS, END_OF_TEXT, PAD, IM_START, EOS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
)
SPECIAL_TOKENS = [BOS, END_OF_TEXT, PAD, IM_START, EOS]
VOCAB_SIZE = 4096
TRAINING_FILES = 200

# ChatML: what most open chat models use, and what vLLM's chat endpoint renders unchanged.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Written last; its presence means the folder is complete.
MARKER = "model.safetensors"
REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", MARKER)


def is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES)


def _training_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    return files[:TRAINING_FILES]


def _training_text(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def _train_tokenizer(files: list[Path]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(files), trainer=trainer)
    return tokenizer


def _write(path: Path, *, seed: int, log: Callable[[str], None]) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    files = _training_files()
    if not files:
        raise RuntimeError("no CPython standard-library sources found to train the tokenizer on")
    log(f"Training a {VOCAB_SIZE}-token byte-level BPE tokenizer on {len(files)} stdlib files")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(files),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    # transformers 5 writes "TokenizersBackend", a class transformers 4 tools (llama.cpp's
    # converter among them) do not know; PreTrainedTokenizerFast loads in both.
    config_path = path / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")

    def vocab(token: str) -> int:
        return cast(int, fast.convert_tokens_to_ids(token))  # one token in, one id out

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=vocab(BOS),
        eos_token_id=vocab(EOS),
        pad_token_id=vocab(PAD),
        dtype="float32",
    )
    log(f"Initialising a 4-layer Llama with random weights (seed {seed})")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_new_tokens=64,
    )
    model.save_pretrained(path)
    log(f"Wrote {sum(p.numel() for p in model.parameters()):,} parameters")


def create_tiny_model(
    path: str | os.PathLike[str], *, seed: int = 0, log: Callable[[str], None] | None = None
) -> Path:
    """Write the tiny chat model to ``path`` unless a complete one is already there."""
    path = Path(path)
    log = log or (lambda _msg: None)
    if is_complete(path):
        log(f"Tiny model already present at {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename, so a crash never leaves a half-written folder that
    # is_complete() would accept, and concurrent creators do not interleave files.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        _write(staging, seed=seed, log=log)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    log(f"Tiny model written to {path}")
    return path
