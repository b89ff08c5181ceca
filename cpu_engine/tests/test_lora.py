"""LoRA adapters in a real CPU engine process: PEFT adapters made offline for the tiny model,
loaded and unloaded at run time through vLLM's routes, an LRU bounded by --max-cpu-loras, the
adapter selected by ``model``, ``/v1/models`` and ``vllm:lora_requests_info`` as vLLM has them."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cpu_engine.tests.engine_process import (
    API_KEY,
    Engine,
    EngineArgs,
    free_port,
    scrape,
    start_engine,
    stop_engine,
    wait_ready,
)

pytestmark = [pytest.mark.engine, pytest.mark.processes]

BASE = "berth-tiny-chat"
CHAT = {"messages": [{"role": "user", "content": "def main():"}], "max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory) -> dict[str, Path]:
    from cpu_engine.tiny_adapter import make_tiny_adapter

    root = tmp_path_factory.mktemp("adapters")
    made = {f"a{i}": make_tiny_adapter(root / f"a{i}", tiny_model_path, seed=i) for i in range(3)}
    # Same weights, but a rank above the engine's --max-lora-rank.
    big = root / "big"
    shutil.copytree(made["a0"], big)
    config = json.loads((big / "adapter_config.json").read_text())
    config["r"] = 64
    (big / "adapter_config.json").write_text(json.dumps(config))
    made["big"] = big
    return made


@pytest.fixture(scope="module")
def engine(tiny_model_path, tmp_path_factory) -> Iterator[Engine]:
    spec = EngineArgs(
        served_name=BASE,
        source=str(tiny_model_path),
        task="chat",
        host="127.0.0.1",
        port=free_port(),
        api_key=API_KEY,
        extra_args=("--max-loras", "1", "--max-cpu-loras", "2", "--max-lora-rank", "16"),
    )
    process = start_engine(spec, tmp_path_factory.mktemp("lora-engine") / "engine.log")
    try:
        wait_ready(process)
        yield process
    finally:
        stop_engine(process)


def post(engine: Engine, path: str, body: dict, *, key: bool = True) -> httpx.Response:
    return httpx.post(f"{engine.url}{path}", json=body, headers=engine.auth if key else {}, timeout=60)


def load(engine: Engine, name: str, path: Path) -> httpx.Response:
    return post(engine, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})


def unload(engine: Engine, name: str) -> httpx.Response:
    return post(engine, "/v1/unload_lora_adapter", {"lora_name": name})


def chat(engine: Engine, model: str, **extra) -> httpx.Response:
    return post(engine, "/v1/chat/completions", {**CHAT, "model": model, **extra})


def loaded(engine: Engine) -> dict[str, str | None]:
    data = httpx.get(f"{engine.base_url}/models", headers=engine.auth, timeout=10).json()["data"]
    return {card["id"]: card["parent"] for card in data}


@pytest.fixture
def clean(engine) -> Iterator[None]:
    for name in loaded(engine):
        if name != BASE:
            unload(engine, name)
    yield


def test_an_adapter_changes_greedy_output_and_answers_under_its_name(engine, adapters, clean):
    assert load(engine, "acme/support-v2", adapters["a0"]).text == (
        "Success: LoRA adapter 'acme/support-v2' added successfully."
    )
    assert load(engine, "acme/other", adapters["a1"]).status_code == 200

    base = chat(engine, BASE).json()
    first = chat(engine, "acme/support-v2").json()
    again = chat(engine, "acme/support-v2").json()
    other = chat(engine, "acme/other").json()

    text = [r["choices"][0]["message"]["content"] for r in (base, first, again, other)]
    assert text[1] == text[2]  # greedy through an adapter is deterministic
    assert text[1] != text[0]  # the adapter's nonzero B weights change what the model says
    assert text[3] not in (text[0], text[1])  # and two adapters are two different models
    assert first["model"] == "acme/support-v2"
    assert first["usage"]["prompt_tokens"] == base["usage"]["prompt_tokens"]
    assert first["usage"]["completion_tokens"] == 12
    # The base still answers through transformers' batching loop, unchanged by the adapters.
    assert chat(engine, BASE).json()["choices"][0]["message"]["content"] == text[0]


def test_streaming_through_an_adapter_matches_the_whole_answer(engine, adapters, clean):
    load(engine, "acme/support-v2", adapters["a0"])
    whole = chat(engine, "acme/support-v2").json()["choices"][0]["message"]["content"]
    streamed, usage = [], None
    with httpx.stream(
        "POST",
        f"{engine.base_url}/chat/completions",
        json={**CHAT, "model": "acme/support-v2", "stream": True, "stream_options": {"include_usage": True}},
        headers=engine.auth,
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert chunk["model"] == "acme/support-v2"
                for choice in chunk["choices"]:
                    streamed.append(choice["delta"].get("content") or "")
                usage = chunk.get("usage") or usage
    assert "".join(streamed) == whole
    assert usage["completion_tokens"] == 12


def test_responses_and_messages_answer_through_the_adapter_they_name(engine, adapters, clean):
    load(engine, "acme/support-v2", adapters["a0"])
    adapter = chat(engine, "acme/support-v2").json()["choices"][0]["message"]["content"]
    base = chat(engine, BASE).json()["choices"][0]["message"]["content"]
    prompt = CHAT["messages"][0]["content"]

    def responses(model: str) -> dict:
        body = {"model": model, "input": prompt, "max_output_tokens": 12, "temperature": 0}
        return post(engine, "/v1/responses", body).json()

    def messages(model: str, **extra) -> httpx.Response:
        body = {"model": model, "messages": CHAT["messages"], "max_tokens": 12, "temperature": 0, **extra}
        return post(engine, "/v1/messages", body)

    answered = responses("acme/support-v2")
    assert answered["model"] == "acme/support-v2"
    assert answered["output"][0]["content"][0]["text"] == adapter != base
    assert responses(BASE)["output"][0]["content"][0]["text"] == base
    message = messages("acme/support-v2").json()
    assert message["model"] == "acme/support-v2"
    assert message["content"][0]["text"] == adapter
    streamed = messages("acme/support-v2", stream=True).text
    assert '"model":"acme/support-v2"' in streamed.replace(" ", "")
    deltas = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    text = "".join(d["delta"].get("text", "") for d in deltas if d.get("type") == "content_block_delta")
    assert text == adapter


def test_models_lists_loaded_adapters_with_their_parent(engine, adapters, clean):
    load(engine, "acme/support-v2", adapters["a0"])
    assert loaded(engine) == {BASE: None, "acme/support-v2": BASE}
    assert unload(engine, "acme/support-v2").status_code == 200
    assert loaded(engine) == {BASE: None}
    assert chat(engine, "acme/support-v2").status_code == 404


def test_the_least_recently_used_adapter_is_evicted_past_max_cpu_loras(engine, adapters, clean):
    load(engine, "t/a0", adapters["a0"])
    load(engine, "t/a1", adapters["a1"])
    assert chat(engine, "t/a0").status_code == 200  # a1 is now the least recently used
    assert load(engine, "t/a2", adapters["a2"]).status_code == 200

    assert set(loaded(engine)) == {BASE, "t/a0", "t/a2"}
    gone = chat(engine, "t/a1")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "model_not_found"  # what tells the gateway to reload
    assert load(engine, "t/a1", adapters["a1"]).status_code == 200  # and reloading works
    assert chat(engine, "t/a1").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"lora_name": "x", "lora_path": "/nowhere/at/all"}, 400, "Could not load"),
        ({"lora_name": "x"}, 400, "lora_path"),
        ({"lora_name": BASE, "lora_path": "/x"}, 400, "base model"),
        ({"lora_name": "x", "lora_path": "/x", "expected_manifest": {"files": 3}}, 400, "not a manifest"),
        (
            {"lora_name": "x", "lora_path": "/nowhere", "expected_manifest": {"files": []}},
            400,
            "does not match its manifest: /nowhere is missing",
        ),
    ],
)
def test_bad_loads_get_clear_errors(engine, clean, body, status, words):
    response = post(engine, "/v1/load_lora_adapter", body)
    assert response.status_code == status
    assert words in response.json()["error"]["message"]


def test_loading_twice_a_rank_too_high_and_unknown_unloads_are_refused(engine, adapters, clean):
    assert load(engine, "acme/x", adapters["a0"]).status_code == 200
    twice = load(engine, "acme/x", adapters["a0"])
    assert twice.status_code == 400
    assert "has already been loaded" in twice.json()["error"]["message"]
    big = load(engine, "acme/big", adapters["big"])
    assert big.status_code == 400
    assert "LoRA rank 64 is greater than max_lora_rank 16" in big.json()["error"]["message"]
    assert unload(engine, "acme/nothing").status_code == 404


def test_the_admin_routes_need_the_worker_key(engine, adapters, clean):
    body = {"lora_name": "acme/x", "lora_path": str(adapters["a0"])}
    assert post(engine, "/v1/load_lora_adapter", body, key=False).status_code == 401
    assert post(engine, "/v1/unload_lora_adapter", {"lora_name": "acme/x"}, key=False).status_code == 401
    assert "acme/x" not in loaded(engine)


def test_lora_requests_info_shows_running_and_waiting_adapters(engine, adapters, clean):
    load(engine, "t/a0", adapters["a0"])
    load(engine, "t/a1", adapters["a1"])
    long = {"max_tokens": 400, "ignore_eos": True}
    threads = [
        threading.Thread(target=chat, args=(engine, name), kwargs=long, daemon=True)
        for name in ("t/a0", "t/a1")
    ]
    threads[0].start()
    time.sleep(0.5)
    threads[1].start()
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not seen.get("waiting"):
        for key in scrape(engine):
            if key.startswith("vllm:lora_requests_info{"):
                labels = dict(p.split("=", 1) for p in key[len("vllm:lora_requests_info{") : -1].split(","))
                seen = {k.replace("_lora_adapters", ""): v.strip('"') for k, v in labels.items()}
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=60)
    # --max-loras 1: one adapter runs, the other's request waits for it.
    assert seen["max_lora"] == "1"
    assert {seen["running"], seen["waiting"]} == {"t/a0", "t/a1"}


def test_an_engine_without_max_loras_has_no_adapter_routes():
    from cpu_engine.app import create_app
    from cpu_engine.tests.test_app import IdleBackend

    app = create_app(task="chat", backend=IdleBackend(), served_name="tiny", api_key="k")

    async def send():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return await client.post(
                "/v1/load_lora_adapter",
                json={"lora_name": "a", "lora_path": "/a"},
                headers={"Authorization": "Bearer k"},
            )

    assert asyncio.run(send()).status_code == 404
