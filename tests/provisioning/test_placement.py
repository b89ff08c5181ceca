"""Placement is pure: best fit over a capacity snapshot, TP on one node, clear reasons."""

from provisioning.placement import NodeCapacity, Placement, Request, Unplaceable, place, take


def node(name, free, total=8, memory=81_920, slots=(), labels=None):
    return NodeCapacity(
        node_id=name,
        name=name,
        labels=labels or {},
        free_gpus={i: memory for i in free},
        total_gpus=total,
        free_cpu_slots=list(slots),
        cpu_slots=len(slots),
    )


def test_it_prefers_the_fullest_node_that_fits():
    nodes = [node("a", range(8)), node("b", [6, 7]), node("c", [3, 4, 5])]
    assert place(Request(gpus=2), nodes) == Placement(node_id="b", gpu_indices=(6, 7))


def test_it_keeps_big_holes_for_tensor_parallel_replicas():
    nodes = [node("a", range(4)), node("b", [0])]
    first = place(Request(gpus=1), nodes)
    assert first.node_id == "b"  # not fragmenting node a
    take(nodes, first)
    assert place(Request(gpus=4), nodes) == Placement(node_id="a", gpu_indices=(0, 1, 2, 3))


def test_it_never_splits_a_replica_across_nodes():
    nodes = [node("a", [0, 1]), node("b", [0, 1])]
    result = place(Request(gpus=4), nodes)
    assert isinstance(result, Unplaceable)
    assert "needs 4 free GPU(s) on one node; at most 2 free on any node" in result.reason


def test_it_says_when_no_node_is_big_enough():
    result = place(Request(gpus=16), [node("a", range(8))])
    assert result == Unplaceable("needs 16 GPUs on one node; the largest node has 8")


def test_it_skips_gpus_with_too_little_memory():
    nodes = [node("small", range(8), memory=24_576), node("big", [0], memory=81_920)]
    assert place(Request(gpus=1, memory_mb_per_gpu=40_000), nodes).node_id == "big"
    result = place(Request(gpus=2, memory_mb_per_gpu=40_000), nodes)
    assert isinstance(result, Unplaceable) and "40000 MiB" in result.reason


def test_it_puts_cpu_replicas_on_cpu_slots():
    nodes = [node("a", [], total=0, slots=[0, 1]), node("b", [], total=0, slots=[1])]
    assert place(Request(gpus=0), nodes) == Placement(node_id="b", cpu_slot=1)
    take(nodes, Placement(node_id="b", cpu_slot=1))
    take(nodes, Placement(node_id="a", cpu_slot=0))
    take(nodes, Placement(node_id="a", cpu_slot=1))
    assert place(Request(gpus=0), nodes) == Unplaceable("all 3 CPU slot(s) on 2 node(s) are in use")


def test_it_honours_the_node_selector():
    nodes = [node("a", range(8), labels={"gpu": "a100"}), node("b", [0], labels={"gpu": "h100"})]
    assert place(Request(gpus=1, node_selector={"gpu": "a100"}), nodes).node_id == "a"
    assert place(Request(gpus=1, node_selector={"gpu": "b200"}), nodes) == Unplaceable(
        "no ready node has labels {'gpu': 'b200'}"
    )


def test_it_reports_no_nodes():
    assert place(Request(gpus=1), []) == Unplaceable("no ready nodes")
