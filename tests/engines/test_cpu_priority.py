"""The CPU engine schedules by vLLM's request ``priority``: best-effort work yields to priority work.

The gateway sends each request with ``priority`` = its service tier's rank (``contract.tiers.RANK``:
priority 0, default 1, flex 2, batch 3). The engine admits at most ``--max-num-seqs`` requests into
its batching loop and queues the rest by (priority, arrival), as vLLM's ``--scheduling-policy
priority`` does. Here a real engine process on the tiny model runs one sequence at a time: a flood
of priority-2 requests queues behind the first, and a priority-0 request sent after them starts
next; a priority-2 request sent after them starts last. The waiting/running gauges follow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from cpu_engine.backends import AdmissionGate
from cpu_engine.tests.engine_process import (
    API_KEY,
    Engine,
    EngineArgs,
    free_port,
    metric,
    scrape,
    start_engine,
    stop_engine,
    wait_ready,
)
from cpu_engine.tiny_model import create_tiny_model

NAME = "berth-tiny-chat"
TOKENS = 4  # per queued request
HOLD_TOKENS = 1500  # the first request holds the only slot until the test lets it go


@pytest.fixture(scope="module")
def one_seq_engine(tmp_path_factory) -> Iterator[Engine]:
    path = create_tiny_model(tmp_path_factory.mktemp("models") / NAME)
    spec = EngineArgs(
        served_name=NAME,
        source=str(path),
        task="chat",
        host="127.0.0.1",
        port=free_port(),
        api_key=API_KEY,
        extra_args=("--max-num-seqs", "1"),
    )
    engine = start_engine(spec, tmp_path_factory.mktemp("logs") / "engine.log")
    try:
        wait_ready(engine)
        yield engine
    finally:
        stop_engine(engine)


def _gauges(engine: Engine) -> tuple[float, float]:
    values = scrape(engine)
    return (
        metric(values, "vllm:num_requests_running", model_name=NAME),
        metric(values, "vllm:num_requests_waiting", model_name=NAME),
    )


async def _run(engine: Engine, late_priority: int) -> list[str]:
    """Start order (first token) of a priority-2 flood and one request sent after it.

    The first request of the flood holds the engine's one slot until everything else is queued
    (the gauges say so); the test then hangs it up, and the gate alone decides the order.
    """
    started: list[str] = []

    async def request(client: httpx.AsyncClient, tag: str, priority: int, tokens: int = TOKENS) -> None:
        body = {
            "model": NAME,
            "prompt": "the lighthouse keeper said",
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
            "priority": priority,
        }
        async with client.stream("POST", engine.base_url + "/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {") and tag not in started:
                    started.append(tag)

    async def gauges_reach(expected: tuple[float, float]) -> None:
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(_gauges, engine) != expected:
            assert time.monotonic() < deadline, f"the engine never reached running/waiting {expected}"
            await asyncio.sleep(0.02)

    async with httpx.AsyncClient(headers=engine.auth, timeout=60) as client:
        holder = asyncio.create_task(request(client, "flood-0", 2, HOLD_TOKENS))
        await gauges_reach((1.0, 0.0))
        tasks = []
        for n in range(1, 4):
            tasks.append(asyncio.create_task(request(client, f"flood-{n}", 2)))
            await gauges_reach((1.0, float(n)))  # a defined arrival order
        tasks.append(asyncio.create_task(request(client, "late", late_priority)))
        await gauges_reach((1.0, 4.0))
        holder.cancel()  # the client hangs up: the engine frees the slot
        await asyncio.gather(*tasks)
    return started


@pytest.mark.engine
@pytest.mark.processes
def test_priority_work_starts_before_queued_best_effort_work(one_seq_engine):
    started = asyncio.run(_run(one_seq_engine, late_priority=0))
    assert started == ["flood-0", "late", "flood-1", "flood-2", "flood-3"]
    assert _gauges(one_seq_engine) == (0.0, 0.0)


@pytest.mark.engine
@pytest.mark.processes
def test_equal_priorities_are_served_first_come_first_served(one_seq_engine):
    started = asyncio.run(_run(one_seq_engine, late_priority=2))
    assert started == ["flood-0", "flood-1", "flood-2", "flood-3", "late"]


# ---------------------------------------------------------------------------------- the gate alone


def test_the_gate_admits_by_priority_then_arrival_and_skips_cancelled_waiters():
    async def scenario() -> list[str]:
        gate = AdmissionGate(1)
        admitted: list[str] = []
        await gate.acquire(5)  # the one running

        async def wait(tag: str, priority: int) -> None:
            await gate.acquire(priority)
            admitted.append(tag)

        tasks = {
            tag: asyncio.create_task(wait(tag, priority))
            for tag, priority in (("b2", 2), ("c2", 2), ("a0", 0), ("gone", -1), ("d1", 1))
        }
        await asyncio.sleep(0)
        assert gate.queued == 5
        tasks["gone"].cancel()
        await asyncio.sleep(0)
        assert gate.queued == 4 and gate.active == 1
        for _ in range(4):
            gate.release()
            await asyncio.sleep(0)
        gate.release()
        assert gate.active == 0
        return admitted

    assert asyncio.run(scenario()) == ["a0", "d1", "b2", "c2"]


def test_a_waiter_cancelled_once_admitted_gives_its_place_to_the_next():
    async def scenario() -> int:
        gate = AdmissionGate(1)
        await gate.acquire()
        first = asyncio.create_task(gate.acquire(0))
        second = asyncio.create_task(gate.acquire(0))
        await asyncio.sleep(0)
        gate.release()  # admits `first` …
        first.cancel()  # … which is cancelled before it runs
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert second.done()
        return gate.active

    assert asyncio.run(scenario()) == 1
