"""The HTTP/1.1 client (services/common/http1.py) against a scripted raw server: keep-alive, answer framing
(Content-Length, chunked, 1xx, close), stale connections, timeouts, header injection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from services.common.http1 import (
    BadResponseError,
    BodyTooLarge,
    ConnectError,
    Origin,
    ServerDisconnectedError,
)

Script = Callable[[int, bytes], bytes | None]  # (request number, request) -> answer; None: hang up


class RawServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.script(len(self.requests), request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def serve():
    servers: list[RawServer] = []
    origins: list[Origin] = []

    async def start(script: Script, timeout_s: float = 2.0, **kw) -> tuple[RawServer, Origin]:
        server = RawServer(script)
        url = await server.start()
        origin = Origin(url, timeout_s=timeout_s, connect_s=1.0, headers={"User-Agent": "t/1"},
                        **kw)
        servers.append(server)
        origins.append(origin)
        return server, origin

    yield start
    for origin in origins:
        await origin.close()
    for server in servers:
        await server.stop()


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
HEADERS = {"webhook-id": "msg_1", "content-type": "application/json"}


async def test_keeps_the_connection_and_sends_the_request_as_given(serve):
    server, origin = await serve(lambda n, req: NO_CONTENT)
    for _ in range(3):
        assert (await origin.post(b'{"a":1}', HEADERS)).status == 204
    assert server.connections == 1
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hook?x=1 HTTP/1.1"
    assert b"webhook-id: msg_1" in lines and b"User-Agent: t/1" in lines
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)
    assert b"Content-Length: 7" in lines and body == b'{"a":1}'


async def test_answer_framings_keep_the_connection_in_step(serve):
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        (b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
         b"4;ext=1\r\nbusy\r\n3\r\n!!!\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        NO_CONTENT,
    ]
    server, origin = await serve(lambda n, req: answers[n - 1])
    got = [await origin.post(b"{}", HEADERS) for _ in answers]
    assert [r.status for r in got] == [200, 202, 503, 204]
    assert got[2].headers["retry-after"] == "7"
    assert server.connections == 1


async def test_close_and_unframed_answers_are_not_reused(serve):
    answers = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\nxx",
               NO_CONTENT]
    server, origin = await serve(lambda n, req: answers[n - 1])
    assert [(await origin.post(b"{}", HEADERS)).status for _ in answers] == [200] * 3 + [204]
    assert server.connections == 4


async def test_a_connection_the_server_closed_while_idle_is_replaced(serve):
    # The server answers, then hangs up on the next request before answering.
    server, origin = await serve(lambda n, req: NO_CONTENT if n % 2 else None)
    assert (await origin.post(b"{}", HEADERS)).status == 204
    await asyncio.sleep(0.05)
    # Request 2 on the kept connection: the server hangs up without a byte; the client
    # tries once more on a fresh connection (request 3: answered).
    assert (await origin.post(b"{}", HEADERS)).status == 204
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_is_an_error(serve):
    server, origin = await serve(lambda n, req: None)
    with pytest.raises(ServerDisconnectedError):
        await origin.post(b"{}", HEADERS)
    assert len(server.requests) == 1  # not sent twice on a fresh connection


async def test_timeout_closes_the_connection(serve):
    answers = {1: NO_CONTENT}

    def script(n: int, req: bytes) -> bytes | None:
        return answers.get(n, b"")  # request 2: no answer at all

    server, origin = await serve(script, timeout_s=0.3)
    assert (await origin.post(b"{}", HEADERS)).status == 204
    with pytest.raises(TimeoutError):
        await origin.post(b"{}", HEADERS)
    answers[3] = NO_CONTENT
    assert (await origin.post(b"{}", HEADERS)).status == 204
    assert server.connections == 2  # the timed-out connection was not reused


async def test_malformed_answer(serve):
    _, origin = await serve(lambda n, req: b"SMTP ready\r\n\r\n")
    with pytest.raises(BadResponseError):
        await origin.post(b"{}", HEADERS)


async def test_refused_connection_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    origin = Origin(f"http://127.0.0.1:{port}/", timeout_s=2, connect_s=1, headers={})
    with pytest.raises(ConnectError):
        await origin.post(b"{}", HEADERS)


async def test_header_values_with_line_breaks_are_refused(serve):
    server, origin = await serve(lambda n, req: NO_CONTENT)
    with pytest.raises(ValueError):
        await origin.post(b"{}", {"webhook-id": "x\r\nX-Injected: 1"})
    assert server.requests == []


async def test_interim_1xx_answers_are_skipped_with_their_headers(serve):
    # llhttp completes each 1xx as a message of its own; the client waits for the real one.
    answers = [(b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n"),
               NO_CONTENT]
    server, origin = await serve(lambda n, req: answers[n - 1])
    first = await origin.post(b"{}", HEADERS)
    assert first.status == 429
    assert {k.lower(): v for k, v in first.headers.items()} == {"retry-after": "3",
                                                          "content-length": "0"}  # no "link"
    assert (await origin.post(b"{}", HEADERS)).status == 204
    assert server.connections == 1


async def test_chunked_trailers_are_read_but_not_taken_as_headers(serve):
    answers = [(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-More: 1\r\n\r\n"),
               NO_CONTENT]
    server, origin = await serve(lambda n, req: answers[n - 1])
    first = await origin.post(b"{}", HEADERS)
    assert first.status == 200 and "x-sum" not in first.headers
    assert (await origin.post(b"{}", HEADERS)).status == 204
    assert server.connections == 1  # the trailers were consumed: the connection is in step


async def test_long_chunked_body_and_extra_bytes_close_the_connection(serve):
    chunk = b"%x\r\n%s\r\n" % (40_000, b"x" * 40_000)
    # Over 64 KiB of chunks and no last chunk: only the drain limit ends this answer.
    answers = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2,
               NO_CONTENT + NO_CONTENT,  # one answer too many
               NO_CONTENT]
    server, origin = await serve(lambda n, req: answers[n - 1])
    assert [(await origin.post(b"{}", HEADERS)).status for _ in answers] == [200, 204, 204]
    assert server.connections == 3


async def test_upgrade_and_oversized_head_are_bad_answers(serve):
    answers = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000]  # no end in sight
    _, origin = await serve(lambda n, req: answers[(n - 1) % 2])
    for _ in answers:
        with pytest.raises(BadResponseError):
            await origin.post(b"{}", HEADERS)


# -- request(): any method, the answer's body read whole (the gateway's upstream calls) --


async def test_request_reads_each_framing_whole_and_keeps_the_connection(serve):
    answers = [(b"HTTP/1.1 200 OK\r\nContent-Type: Application/JSON; charset=utf-8\r\n"
                b"Content-Length: 7\r\n\r\n{\"a\":1}"),
               (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n"),
               NO_CONTENT,
               b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"]
    server, origin = await serve(lambda n, req: answers[n - 1])
    got = [await origin.request("GET", "/v1/x?a=%20", {"X-Request-ID": "r1"},
                                body_limit=100, replay_stale=True) for _ in answers]
    assert [(r.status, r.body) for r in got] == [(200, b'{"a":1}'), (200, b"[1,2]"),
                                                 (204, b""), (200, b"")]
    assert got[0].content_type == "application/json"
    assert got[3].headers.getall("set-cookie") == ["a=1", "b=2"]  # repeated headers kept
    assert server.connections == 1
    first = server.requests[0].split(b"\r\n")
    assert first[0] == b"GET /v1/x?a=%20 HTTP/1.1" and b"X-Request-ID: r1" in first
    assert not any(line.lower().startswith(b"content-length") for line in first)


async def test_request_sends_a_body_with_its_length(serve):
    server, origin = await serve(lambda n, req: NO_CONTENT)
    await origin.request("PUT", "/v1/p/1", {"Content-Type": "application/json"}, b'{"a":1}',
                         body_limit=100, replay_stale=True)
    head, body = server.requests[0].split(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"PUT /v1/p/1 HTTP/1.1"
    assert b"Content-Length: 7" in head.split(b"\r\n") and body == b'{"a":1}'


async def test_a_body_that_runs_to_the_close_is_read_whole(serve):
    answers = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000, NO_CONTENT]
    server, origin = await serve(lambda n, req: answers[n - 1])
    first = await origin.request("GET", "/", {}, body_limit=200_000, replay_stale=True)
    assert first.status == 200 and first.body == b"x" * 100_000
    assert (await origin.request("GET", "/", {}, body_limit=10, replay_stale=True)).status == 204
    assert server.connections == 2


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",  # known at the head: not read
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nxxxxxx\r\n6\r\nxxxxxx\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 11,
])
async def test_a_body_over_the_limit_is_refused_and_the_connection_closed(serve, answer):
    answers = [answer, NO_CONTENT]
    server, origin = await serve(lambda n, req: answers[n - 1])
    with pytest.raises(BodyTooLarge) as err:
        await origin.request("GET", "/", {}, body_limit=10, replay_stale=True)
    assert err.value.status == 200
    assert (await origin.request("GET", "/", {}, body_limit=10, replay_stale=True)).status == 204
    assert server.connections == 2  # the refused answer's connection was not reused


async def test_an_answer_to_head_has_no_body(serve):
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", NO_CONTENT]
    _, origin = await serve(lambda n, req: answers[n - 1])
    head = await origin.request("HEAD", "/", {}, body_limit=100, replay_stale=True)
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "5")
    assert (await origin.request("GET", "/", {}, body_limit=100, replay_stale=True)).status == 204


async def test_a_stale_connection_is_replaced_only_when_the_caller_allows_it(serve):
    # The server answers, then hangs up on the next request before answering.
    server, origin = await serve(lambda n, req: NO_CONTENT if n % 2 else None)
    assert (await origin.request("POST", "/", {}, b"{}", body_limit=10,
                                 replay_stale=False)).status == 204
    await asyncio.sleep(0.05)
    with pytest.raises(ServerDisconnectedError):
        await origin.request("POST", "/", {}, b"{}", body_limit=10, replay_stale=False)
    assert len(server.requests) == 2  # sent once, never again
    assert (await origin.request("PUT", "/", {}, b"{}", body_limit=10,
                                 replay_stale=True)).status == 204  # fresh connection (3)
    await asyncio.sleep(0.05)
    assert (await origin.request("PUT", "/", {}, b"{}", body_limit=10,
                                 replay_stale=True)).status == 204  # 4 hung up, 5 answered
    assert len(server.requests) == 5 and server.connections == 3


async def test_request_line_breaks_are_refused(serve):
    server, origin = await serve(lambda n, req: NO_CONTENT)
    for method, target in (("GET", "/a\r\nX-Injected: 1"), ("GET\r\n", "/")):
        with pytest.raises(ValueError):
            await origin.request(method, target, {}, body_limit=10, replay_stale=True)
    assert server.requests == []


async def test_an_idle_connection_is_kept_for_idle_s_only(serve):
    server, origin = await serve(lambda n, req: NO_CONTENT, idle_s=0.2)
    await origin.post(b"{}", HEADERS)
    await asyncio.sleep(0.05)
    await origin.post(b"{}", HEADERS)  # idle 0.05 s: reused
    assert server.connections == 1
    await asyncio.sleep(0.3)
    await origin.post(b"{}", HEADERS)  # idle 0.3 s: a new one
    assert server.connections == 2


@pytest.mark.parametrize(("keep_alive", "connections"), [
    ("timeout=1", 2),  # the server closes at 1 s idle: with the margin, never reused
    ("timeout=5, max=100", 1),
    ("max=100", 1),  # no timeout announced: idle_s alone
])
async def test_the_servers_keep_alive_timeout_bounds_reuse(serve, keep_alive, connections):
    answer = b"HTTP/1.1 204 No Content\r\nKeep-Alive: %s\r\n\r\n" % keep_alive.encode()
    server, origin = await serve(lambda n, req: answer, idle_s=60)
    await origin.post(b"{}", HEADERS)
    await asyncio.sleep(0.05)
    await origin.post(b"{}", HEADERS)
    assert server.connections == connections
