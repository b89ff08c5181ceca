"""A fake ``pynvml`` (nvidia-ml-py) for agent subprocesses in tests: ``FAKE_GPUS`` H100s.

Put this folder first on ``PYTHONPATH`` of a node agent to make it see GPUs on a GPU-less box.
"""

import os
from types import SimpleNamespace

_COUNT = int(os.environ.get("FAKE_GPUS", "2"))


def nvmlInit():  # noqa: N802 - pynvml's names
    pass


def nvmlShutdown():  # noqa: N802
    pass


def nvmlDeviceGetCount():  # noqa: N802
    return _COUNT


def nvmlDeviceGetHandleByIndex(index):  # noqa: N802
    return index


def nvmlDeviceGetMemoryInfo(handle):  # noqa: N802
    return SimpleNamespace(total=80 * 2**30, used=512 * 2**20, free=80 * 2**30 - 512 * 2**20)


def nvmlDeviceGetUtilizationRates(handle):  # noqa: N802
    return SimpleNamespace(gpu=0, memory=0)


def nvmlDeviceGetUUID(handle):  # noqa: N802
    return f"GPU-fake-{handle}"


def nvmlDeviceGetName(handle):  # noqa: N802
    return "NVIDIA H100 80GB HBM3 (fake)"
