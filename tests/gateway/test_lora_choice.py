"""LoRA affinity's choice rule, alone: a holder when its load is bounded, a spill when it is not."""

from __future__ import annotations

from gateway.adapters import affinity_choice
from gateway.routing import Worker

WORKERS = [Worker(f"w{i}", f"http://127.0.0.1:{9000 + i}", "") for i in range(3)]


def test_the_least_loaded_holder_wins():
    loads = {"w0": 1.0, "w1": 0.0, "w2": 2.0}
    held = {"w0": {"acme/a"}, "w1": set(), "w2": {"acme/a"}}
    assert affinity_choice("acme/a", WORKERS, loads, held, 0.25).worker_id == "w0"


def test_a_hot_adapter_spills_when_its_holder_is_over_the_bound():
    # mean 2, bound (1 + 0.25) × 2 + 1 = 3.5: the holder at 5 is skipped.
    loads = {"w0": 5.0, "w1": 0.0, "w2": 1.0}
    held = {"w0": {"acme/a"}}
    assert affinity_choice("acme/a", WORKERS, loads, held, 0.25) is None
    # At 2 (mean 1, bound 2.25) the holder keeps it, though another worker is idle.
    loads["w0"] = 2.0
    assert affinity_choice("acme/a", WORKERS, loads, held, 0.25).worker_id == "w0"


def test_no_holder_means_no_affinity():
    loads = {"w0": 0.0, "w1": 0.0, "w2": 0.0}
    assert affinity_choice("acme/a", WORKERS, loads, {"w0": {"acme/b"}}, 0.25) is None
