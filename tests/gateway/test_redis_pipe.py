"""The auto-pipelined hot-path connection: batching, error replies, reconnects."""

from __future__ import annotations

import asyncio

import hiredis
import pytest
from django.conf import settings

from gateway.redis_pipe import RedisPipe, is_noscript


def test_it_pipelines_concurrent_commands_and_reconnects(redis_client):
    async def run():
        pipe = RedisPipe(settings.REDIS_URL, timeout=2)
        replies = await asyncio.gather(*(pipe.execute(("INCR", "pipe-test")) for _ in range(500)))
        assert sorted(r[0] for r in replies) == list(range(1, 501))
        # An error reply comes back as a value; the other replies are unaffected.
        out = await pipe.execute(("EVALSHA", "0" * 40, 0), ("GET", "pipe-test"))
        assert is_noscript(out[0]) and isinstance(out[0], hiredis.ReplyError)
        assert out[1] == b"500"
        # The connection drops: pending commands fail, the next one reconnects.
        pipe._protocol.transport.abort()
        await asyncio.sleep(0.01)
        assert await pipe.execute(("GET", "pipe-test")) == [b"500"]
        await pipe.close()

    asyncio.run(run())
    assert redis_client.get("pipe-test") == "500"  # and it used the test database


def test_a_stalled_connection_fails_within_the_timeout():
    async def run():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
        port = server.sockets[0].getsockname()[1]
        pipe = RedisPipe(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        with pytest.raises(ConnectionError):
            await pipe.execute(("PING",))
        await pipe.close()
        server.close()

    asyncio.run(run())
