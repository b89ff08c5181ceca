"""Where a new replica goes: pure functions over a snapshot of free capacity (no ORM).

Best fit: a replica needing N GPUs takes N GPUs on ONE node, choosing the node that is left with
the fewest free GPUs afterwards (so big holes stay open for big tensor-parallel replicas), then
the smallest GPUs that are large enough. A CPU-engine replica takes one CPU slot, again on the
fullest node that still has one. When nothing fits, ``place`` says why, for the admin.

Data residency: a private model's replicas go only to nodes whose ``residency`` label is the one
its tenants require (``Request.residencies``, from ``provisioning.residency``); a node without a
label never qualifies, and tenants that require different labels leave it unplaceable.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeCapacity:
    node_id: object
    name: str
    labels: dict = field(default_factory=dict)
    free_gpus: dict[int, int] = field(default_factory=dict)  # index -> memory_total_mb
    total_gpus: int = 0
    free_cpu_slots: list[int] = field(default_factory=list)
    cpu_slots: int = 0
    residency: str = ""


@dataclass(frozen=True)
class Request:
    gpus: int  # 0 for a CPU-engine replica
    memory_mb_per_gpu: int = 0
    node_selector: dict = field(default_factory=dict)
    residencies: tuple[str, ...] = ()  # labels the model's tenants require; empty: any node


@dataclass(frozen=True)
class Placement:
    node_id: object
    gpu_indices: tuple[int, ...] = ()
    cpu_slot: int | None = None


@dataclass(frozen=True)
class Unplaceable:
    reason: str


def _matches(node: NodeCapacity, selector: dict) -> bool:
    return all(str(node.labels.get(k)) == str(v) for k, v in selector.items())


def place(request: Request, nodes: list[NodeCapacity]) -> Placement | Unplaceable:
    required = sorted(set(request.residencies))
    if len(required) > 1:
        return Unplaceable(
            f"its tenants require different data residencies ({', '.join(required)}); no node can hold it"
        )
    if required:
        resident = [n for n in nodes if n.residency == required[0]]
        if not resident:
            return Unplaceable(
                f"data residency {required[0]!r} is required and no ready node has that residency label"
            )
        nodes = resident
    candidates = [n for n in nodes if _matches(n, request.node_selector)]
    if not candidates:
        if not nodes:
            return Unplaceable("no ready nodes")
        where = f" with residency {required[0]!r}" if required else ""
        return Unplaceable(f"no ready node{where} has labels {request.node_selector}")
    if request.gpus == 0:
        with_slot = [n for n in candidates if n.free_cpu_slots]
        if not with_slot:
            total = sum(n.cpu_slots for n in candidates)
            return Unplaceable(f"all {total} CPU slot(s) on {len(candidates)} node(s) are in use")
        best = min(with_slot, key=lambda n: (len(n.free_cpu_slots), n.name))
        return Placement(node_id=best.node_id, cpu_slot=min(best.free_cpu_slots))

    best_choice = None
    biggest_node = max((n.total_gpus for n in candidates), default=0)
    for node in candidates:
        fitting = sorted(
            (mem, idx) for idx, mem in node.free_gpus.items() if mem >= request.memory_mb_per_gpu
        )
        if len(fitting) < request.gpus:
            continue
        chosen = fitting[: request.gpus]
        key = (len(node.free_gpus) - request.gpus, sum(mem for mem, _ in chosen), node.name)
        if best_choice is None or key < best_choice[0]:
            best_choice = (key, node, tuple(sorted(idx for _, idx in chosen)))
    if best_choice is None:
        if biggest_node < request.gpus:
            return Unplaceable(f"needs {request.gpus} GPUs on one node; the largest node has {biggest_node}")
        most_free = max(
            (sum(1 for m in n.free_gpus.values() if m >= request.memory_mb_per_gpu) for n in candidates),
            default=0,
        )
        memory = f" with {request.memory_mb_per_gpu} MiB each" if request.memory_mb_per_gpu else ""
        return Unplaceable(
            f"needs {request.gpus} free GPU(s){memory} on one node; at most {most_free} free on any node"
        )
    _, node, indices = best_choice
    return Placement(node_id=node.node_id, gpu_indices=indices)


def take(nodes: list[NodeCapacity], placement: Placement) -> None:
    """Remove what ``placement`` uses from the snapshot (for the next replica in the same pass)."""
    for node in nodes:
        if node.node_id == placement.node_id:
            for index in placement.gpu_indices:
                node.free_gpus.pop(index, None)
            if placement.cpu_slot is not None and placement.cpu_slot in node.free_cpu_slots:
                node.free_cpu_slots.remove(placement.cpu_slot)
            return
