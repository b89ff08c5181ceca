"""The upstream adapter hands over every byte an engine sent before its connection broke."""

import asyncio
import types

import pytest

from gateway.upstream import AiohttpUpstream, UpstreamError

CHUNKS = [b'data: {"n": %d}\n\n' % i for i in range(1, 7)]


async def _dying_engine(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS)
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body
    )
    await writer.drain()
    writer.close()  # the process died: no terminating chunk


async def _read_late():
    server = await asyncio.start_server(_dying_engine, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = AiohttpUpstream(types.SimpleNamespace(max_connections=4, connect_timeout=2, read_timeout=5))
    try:
        response = await upstream.send("POST", f"http://127.0.0.1:{port}/v1/completions", {}, b"{}")
        # By now the whole body and the broken connection have arrived: the case where aiohttp
        # raised before giving back what it had buffered.
        await asyncio.sleep(0.3)
        got = b""
        with pytest.raises(UpstreamError) as raised:
            async for chunk in response.chunks():
                got += chunk
        await response.close()
        return got, raised.value
    finally:
        await upstream.session.close()
        server.close()
        await server.wait_closed()


def test_bytes_received_before_the_connection_broke_are_delivered():
    got, error = asyncio.run(_read_late())
    assert got == b"".join(CHUNKS)
    assert error.sent is True
