"""PEFT adapter folders as ``peft`` writes them (config + weights), for the registry's checks."""

from __future__ import annotations

import json
from pathlib import Path


def write_adapter(
    folder: Path, *, rank: int = 8, peft_type: str = "LORA", base: str = "", weight_bytes: int = 4096
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": peft_type,
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base,
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * weight_bytes)
    return folder
