"""Per-request ``cache_salt`` for the prefix cache of transformers' continuous batching.

Tenants sharing an engine share its prefix cache: a request whose prompt starts with blocks
already cached skips their prefill, so its first token comes sooner, and a tenant can time
whether another one sent a given prefix (vLLM's security guide, CVE-2025-46570). vLLM closes this
with a request field, ``cache_salt``, mixed into the hash of the first block of the prompt
(``generate_block_hash_extra_keys`` in ``vllm/v1/core/kv_cache_utils.py``): blocks chain their
hashes from the first, so equal prompts with different salts never match. Requests without a
salt share with each other, as in vLLM.

transformers (5.23) has the same design without the salt: each allocator hashes a prompt block
by block with ``compute_block_hash(parent, tokens)``, starting from ``parent=None``, both when it
looks a prompt up (``match_prefix_blocks``) and when it registers the blocks a forward pass
completed (``mark_complete_blocks``). Both run on the batching thread, inside the cache's
``search_prefix_match(request_id, ...)`` and ``mark_complete_blocks(state, ...)``. ``install``
wraps those two per cache so that, for a salted request, the chain starts from a root derived
from the salt instead of ``None``; the hash function sees that root through a thread-local. The
root is a domain-separated BLAKE2b of the salt, so it cannot equal a token block's hash by
construction of the input (cf. vLLM's LoRA/salt collision, vllm-project/vllm#44701).

If the transformers internals this relies on are missing, ``supported()`` is False and the
backend turns block sharing off altogether: no prefix cache is better than a shared one.

It also counts what vLLM's ``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits`` count:
prompt tokens looked up, and those found cached.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import cast

try:
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
    from transformers.generation.continuous_batching.cache_allocators import cache_allocator
except ImportError:  # pragma: no cover - depends on the installed transformers
    PagedAttentionCache = None  # type: ignore[assignment,misc]
    cache_allocator = None  # type: ignore[assignment]

_current = threading.local()  # .root: the salt root of the request being hashed, or None
_original_hash = getattr(cache_allocator, "compute_block_hash", None)


def supported() -> bool:
    return (
        _original_hash is not None
        and PagedAttentionCache is not None
        and hasattr(PagedAttentionCache, "search_prefix_match")
        and hasattr(PagedAttentionCache, "mark_complete_blocks")
    )


def salt_root(salt: str) -> int:
    """The parent hash of a salted prompt's first block (64 bits, as transformers' block hashes)."""
    digest = hashlib.blake2b(salt.encode(), digest_size=8, person=b"berth-cache-salt").digest()
    return int.from_bytes(digest, "little", signed=False)


def _salted_hash(parent_hash: int | None, tokens: list[int]) -> int:
    if parent_hash is None:
        parent_hash = getattr(_current, "root", None)
    # Installed only when supported(), so transformers' own hash is there.
    return cast(Callable[[int | None, list[int]], int], _original_hash)(parent_hash, tokens)


class PrefixCacheSalts:
    """The salts of live requests, keyed by the batching loop's request id, and hit counters."""

    def __init__(self) -> None:
        self._roots: dict[str, int] = {}
        self._matched: dict[str, tuple[int, int]] = {}  # request id -> (queried, hit) tokens
        self.queries = 0  # prompt tokens looked up in the prefix cache
        self.hits = 0  # of those, tokens found cached

    def add(self, request_id: str, salt: str | None) -> None:
        if salt:
            self._roots[request_id] = salt_root(salt)

    def started(self, request_id: str) -> int:
        """The request produced its first output: its lookup is final, count it once. Returns its
        prompt tokens found cached (the usage's ``cached_tokens``)."""
        queried, hit = self._matched.pop(request_id, (0, 0))
        self.queries += queried
        self.hits += hit
        return hit

    def forget(self, request_id: str) -> None:
        self._roots.pop(request_id, None)
        self._matched.pop(request_id, None)

    def install(self, manager) -> None:
        """Make every paged cache the manager creates salt-aware; call before ``manager.start()``."""
        if not supported():
            raise RuntimeError("this transformers release has no prefix-cache hooks for cache_salt")
        cache_allocator.compute_block_hash = _salted_hash
        create = manager._create_batch_processor

        def create_batch_processor():
            processor = create()
            self._wrap(processor.cache)
            return processor

        manager._create_batch_processor = create_batch_processor

    def _wrap(self, cache) -> None:
        if getattr(cache, "_berth_salted", False):
            return
        search, mark = cache.search_prefix_match, cache.mark_complete_blocks
        roots, matched = self._roots, self._matched

        def search_prefix_match(request_id: str, prompt_ids: list[int]) -> int:
            _current.root = roots.get(request_id)
            try:
                found = search(request_id, prompt_ids)
            finally:
                _current.root = None
            # A request that found nothing may be looked up again at the next step; keep the last.
            matched[request_id] = (len(prompt_ids), found)
            return found

        def mark_complete_blocks(state, complete_blocks) -> None:
            _current.root = roots.get(state.request_id)
            try:
                mark(state, complete_blocks)
            finally:
                _current.root = None

        cache.search_prefix_match = search_prefix_match
        cache.mark_complete_blocks = mark_complete_blocks
        cache._berth_salted = True
