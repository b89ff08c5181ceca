"""GPU discovery: NVML, else torch.cuda, else CPU slots; each step survives errors."""

import sys
import types

from provisioning import gpus


class NVMLError(Exception):
    pass


def fake_pynvml(*, count=2, fail_init=False, fail_query=False):
    module = types.ModuleType("pynvml")

    def init():
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    def memory(handle):
        if fail_query:
            raise NVMLError("GPU is lost")
        return types.SimpleNamespace(total=80 * 2**30, used=2**30)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: count
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetMemoryInfo = memory
    module.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37)
    module.nvmlDeviceGetUUID = lambda h: f"GPU-{h}".encode()
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    return module


def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError


def test_it_reads_gpus_from_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(count=2))
    inventory = gpus.discover(cpu_slots=2)
    assert inventory.source == "nvml"
    assert [g.index for g in inventory.gpus] == [0, 1]
    first = inventory.gpus[0]
    assert (first.uuid, first.name, first.memory_total_mb, first.memory_used_mb, first.utilization) == (
        "GPU-0",
        "NVIDIA H100 80GB HBM3",
        81920,
        1024,
        37,
    )


def test_it_falls_back_to_cpu_slots_when_nvml_has_no_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    no_torch(monkeypatch)
    inventory = gpus.discover(cpu_slots=3)
    assert (inventory.source, inventory.gpus, inventory.cpu_slots) == ("cpu", (), 3)


def test_it_falls_back_to_torch_when_nvml_queries_fail(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_query=True))
    torch = types.ModuleType("torch")
    props = types.SimpleNamespace(name="NVIDIA A100", total_memory=40 * 2**30, uuid="abc")
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 1, get_device_properties=lambda i: props
    )
    monkeypatch.setitem(sys.modules, "torch", torch)
    inventory = gpus.discover(cpu_slots=0)
    assert inventory.source == "torch"
    assert inventory.gpus[0].memory_total_mb == 40960


def test_it_uses_cpu_slots_without_pynvml_or_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    no_torch(monkeypatch)
    assert gpus.discover(cpu_slots=2).source == "cpu"
