"""Engine launchers: one per engine kind, each turning an EngineSpec into an exact command line.

``build_launch(spec)`` dispatches on ``spec.engine`` (``vllm`` or ``cpu``).
"""

from provisioning.engines.base import EngineLaunch, EngineSpec

__all__ = ["EngineLaunch", "EngineSpec", "build_launch"]


def build_launch(spec: EngineSpec) -> EngineLaunch:
    if spec.engine == "vllm":
        from provisioning.engines.vllm import build_launch as build
    elif spec.engine == "cpu":
        from provisioning.engines.cpu import build_launch as build
    else:
        raise ValueError(f"unknown engine {spec.engine!r}")
    return build(spec)
