"""A tiny LoRA adapter for the tiny chat model, made offline, so adapter serving is tested for real.

``make_tiny_adapter(path, base, seed)`` writes a PEFT LoRA adapter folder (``adapter_config.json``
and ``adapter_model.safetensors``, what both PEFT and vLLM load) for the model at ``base``. PEFT
initialises LoRA's B matrices to zero, which would make the adapter a no-op; here they get seeded
random values, so greedy outputs through the adapter differ from the base's, and two seeds give
two different adapters.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_tiny_adapter(
    path: str | os.PathLike[str], base: str | os.PathLike[str], seed: int = 0, *, rank: int = 8
) -> Path:
    """Write a rank-``rank`` LoRA adapter for the model folder ``base`` to ``path``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path, base = Path(path), Path(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGET_MODULES), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staging = Path(tmp) / "adapter"
        peft_model.save_pretrained(str(staging))
        (staging / "README.md").unlink(missing_ok=True)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    return path
