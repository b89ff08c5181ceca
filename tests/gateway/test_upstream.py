"""The upstream adapter hands over every byte an engine sent before its connection broke."""

import asyncio
import types

import pytest

from gateway.upstream import AiohttpUpstream, RawUpstream, UpstreamError

CHUNKS = [b'data: {"n": %d}\n\n' % i for i in range(1, 7)]


async def _dying_engine(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS)
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body
    )
    await writer.drain()
    writer.close()  # the process died: no terminating chunk


SETTINGS = types.SimpleNamespace(max_connections=4, connect_timeout=2, read_timeout=5)


async def _read_late(client=AiohttpUpstream):
    server = await asyncio.start_server(_dying_engine, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = client(SETTINGS)
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
        await upstream.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("client", [AiohttpUpstream, RawUpstream], ids=["aiohttp", "raw"])
def test_bytes_received_before_the_connection_broke_are_delivered(client):
    got, error = asyncio.run(_read_late(client))
    assert got == b"".join(CHUNKS)
    assert error.sent is True


async def _engine(reader, writer, seen: list):
    """Answers requests on one keep-alive connection; records each request and the connection's end."""
    connection = object()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            seen.append((connection, head.split(b"\r\n")[0], body))
            if b"/stream" in head:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                await writer.drain()
                continue  # never finishes: the client must drop the connection
            answer = b'{"ok":true}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        seen.append((connection, b"closed", b""))


async def _keep_alive_and_abort():
    seen: list = []
    server = await asyncio.start_server(lambda r, w: _engine(r, w, seen), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    upstream = RawUpstream(SETTINGS)
    try:
        answers = []
        for i in range(3):
            response = await upstream.send(
                "POST", url + "/v1/chat/completions?x=1", {"X-N": str(i)}, b'{"n":%d}' % i
            )
            answers.append((response.status, await response.read()))
            await response.close()
        stream = await upstream.send("POST", url + "/stream", {}, b"{}")
        chunks = stream.chunks()
        first = await anext(chunks)
        waiting = asyncio.create_task(anext(chunks))  # the stream loop, waiting for more
        await asyncio.sleep(0.05)
        await stream.close()  # unfinished (a client hung up): the engine must see its connection end
        with pytest.raises(UpstreamError):
            await asyncio.wait_for(waiting, 1)  # and the waiting reader is woken, not left hanging
        await asyncio.sleep(0.2)
        refused = None
        try:
            await upstream.send("POST", "http://127.0.0.1:1/v1/chat/completions", {}, b"{}")
        except UpstreamError as exc:
            refused = exc
        return answers, first, seen, refused
    finally:
        await upstream.close()
        server.close()


def test_the_raw_client_keeps_connections_alive_drops_unfinished_ones_and_says_what_was_not_sent():
    answers, first, seen, refused = asyncio.run(_keep_alive_and_abort())
    assert answers == [(200, b'{"ok":true}')] * 3
    requests = [entry for entry in seen if entry[1] != b"closed"]
    assert [line for _, line, _ in requests[:3]] == [b"POST /v1/chat/completions?x=1 HTTP/1.1"] * 3
    assert [body for _, _, body in requests[:3]] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert len({id(conn) for conn, _, _ in requests}) == 1  # one keep-alive connection for all four
    assert first == b"first"
    assert seen[-1][1] == b"closed"  # closing the unfinished stream dropped the connection
    assert refused is not None and refused.sent is False


async def _head_of_a_request_with_a_callers_content_length() -> bytes:
    heads: list[bytes] = []

    async def engine(reader, writer):
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(engine, "127.0.0.1", 0)
    upstream = RawUpstream(SETTINGS)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/internal/v1/files"
        response = await upstream.send("POST", url, {"content-length": "2", "Content-Type": "x/y"}, b"{}")
        await response.read()
        await response.close()
        return heads[0]
    finally:
        await upstream.close()
        server.close()


def test_the_raw_client_writes_one_content_length_whatever_the_caller_passes():
    # The files relay passes the client's Content-Length on; two would be a request that strict
    # servers (uvicorn's httptools) refuse as invalid.
    head = asyncio.run(_head_of_a_request_with_a_callers_content_length())
    assert head.lower().count(b"content-length:") == 1
    assert b"content-length: 2\r\n" in head.lower()
