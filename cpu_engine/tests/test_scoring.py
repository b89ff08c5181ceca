"""Rerank and score on the CPU embedding engine, with vLLM's bodies and paths."""

from __future__ import annotations

import httpx
import pytest

from cpu_engine.tests.engine_process import Engine

pytestmark = [pytest.mark.engine, pytest.mark.processes]

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Bananas are a yellow fruit rich in potassium.",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply on Tuesday.",
]


def post(engine: Engine, path: str, body: dict, *, auth: bool = True) -> httpx.Response:
    return httpx.post(f"{engine.url}{path}", json=body, headers=engine.auth if auth else {}, timeout=30)


def tokens(engine: Engine, text: str) -> int:
    return post(engine, "/tokenize", {"prompt": text}).json()["count"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_puts_the_relevant_document_first_and_bills_every_text_read(embedding_engine, path):
    r = post(
        embedding_engine,
        path,
        {"model": embedding_engine.spec.served_name, "query": QUERY, "documents": DOCUMENTS},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("rerank-")
    assert body["model"] == embedding_engine.spec.served_name
    results = body["results"]
    assert [x["index"] for x in results][0] == 1
    assert results[0]["document"] == {"text": DOCUMENTS[1]}
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["relevance_score"] > results[1]["relevance_score"] + 0.2
    expected = tokens(embedding_engine, QUERY) + sum(tokens(embedding_engine, d) for d in DOCUMENTS)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_rerank_top_n_and_return_documents(embedding_engine):
    body = {
        "query": QUERY,
        "documents": [{"text": d} for d in DOCUMENTS],
        "top_n": 1,
        "return_documents": False,
    }
    results = post(embedding_engine, "/v1/rerank", body).json()["results"]
    assert len(results) == 1
    assert results[0]["index"] == 1
    assert "document" not in results[0]


def test_score_one_against_many_and_pairwise(embedding_engine):
    one = post(embedding_engine, "/v1/score", {"text_1": QUERY, "text_2": DOCUMENTS}).json()
    assert one["object"] == "list"
    assert [d["index"] for d in one["data"]] == [0, 1, 2]
    scores = [d["score"] for d in one["data"]]
    assert max(range(3), key=lambda i: scores[i]) == 1
    assert all(-1.0 <= s <= 1.0001 for s in scores)
    expected = tokens(embedding_engine, QUERY) + sum(tokens(embedding_engine, d) for d in DOCUMENTS)
    assert one["usage"] == {"prompt_tokens": expected, "total_tokens": expected, "completion_tokens": 0}

    pairs = post(
        embedding_engine, "/score", {"text_1": [QUERY, "a ripe banana"], "text_2": DOCUMENTS[1::-1]}
    ).json()
    # Each text against its partner: both pairs match, so both score well above the mismatch.
    assert all(d["score"] > scores[2] + 0.2 for d in pairs["data"])


def test_scoring_refuses_bad_bodies_in_openai_shape_and_needs_the_key_on_v1(embedding_engine):
    r = post(embedding_engine, "/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = post(embedding_engine, "/v1/rerank", {"query": QUERY, "documents": []})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "documents"
    assert (
        post(embedding_engine, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS}, auth=False).status_code
        == 401
    )
    assert (
        post(embedding_engine, "/v2/rerank", {"query": QUERY, "documents": DOCUMENTS}, auth=False).status_code
        == 401
    )
