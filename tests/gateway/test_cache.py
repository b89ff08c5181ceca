"""The gateway's mirror cache: one Redis read per entry however many requests miss it at once."""

import asyncio

from gateway.cache import TtlCache


def run(coro):
    return asyncio.run(coro)


def test_concurrent_misses_share_one_read():
    async def scenario():
        cache: TtlCache[str, int] = TtlCache(60, max_entries=10)
        reads = 0

        async def load():
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.05)
            return 42

        values = await asyncio.gather(*(cache.get("k", load) for _ in range(500)))
        again = await cache.get("k", load)
        return reads, set(values), again

    assert run(scenario()) == (1, {42}, 42)


def test_an_expired_entry_is_read_again_and_fresh_skips_the_copy():
    async def scenario():
        cache: TtlCache[str, int] = TtlCache(0.05, max_entries=10)
        values = iter(range(10))

        async def load():
            return next(values)

        first = await cache.get("k", load)
        cached = await cache.get("k", load)
        forced = await cache.get("k", load, fresh=True)
        await asyncio.sleep(0.06)
        expired = await cache.get("k", load)
        return first, cached, forced, expired

    assert run(scenario()) == (0, 0, 1, 2)


def test_an_invalidation_during_a_read_is_not_overwritten_by_that_read():
    async def scenario():
        cache: TtlCache[str, str] = TtlCache(60, max_entries=10)
        gate = asyncio.Event()
        answers = iter(["old", "new"])

        async def load():
            value = next(answers)
            if value == "old":
                await gate.wait()
            return value

        waiting = asyncio.ensure_future(cache.get("k", load))
        await asyncio.sleep(0)
        cache.pop("k")  # the control plane changed the entry while it was being read
        gate.set()
        return await waiting, await cache.get("k", load)

    assert run(scenario()) == ("old", "new")


def test_a_cancelled_waiter_does_not_cancel_the_shared_read():
    async def scenario():
        cache: TtlCache[str, int] = TtlCache(60, max_entries=10)

        async def load():
            await asyncio.sleep(0.05)
            return 7

        leaving = asyncio.ensure_future(cache.get("k", load))
        staying = asyncio.ensure_future(cache.get("k", load))
        await asyncio.sleep(0.01)
        leaving.cancel()
        return await staying

    assert run(scenario()) == 7


def test_a_failed_read_is_not_cached():
    async def scenario():
        cache: TtlCache[str, int] = TtlCache(60, max_entries=10)
        calls = 0

        async def load():
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("redis down")
            return 5

        try:
            await cache.get("k", load)
        except ConnectionError:
            pass
        return await cache.get("k", load), calls

    assert run(scenario()) == (5, 2)
