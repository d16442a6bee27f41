"""A small HTTP/1.1 client for one origin: POST with keep-alive connections, nothing else.

Why not aiohttp's ClientSession: per delivery it cost ~110 µs of CPU (request and
response objects, multidicts, cookie and tracing hooks, stream readers), against ~25 µs
for a bare protocol doing the same exchange (both measured to bench/webhook_receiver.py,
32 at a time, uvloop); that was most of the worker's work per webhook. A webhook POST
needs little of it: one origin per subscription, a body of bytes, the status and two
headers of the answer, the answer's body thrown away.

Why httptools: the answers are parsed by llhttp (Node's HTTP parser, in C; the binding
uvicorn uses), so status line, headers, Content-Length / chunked framing, trailers and
1xx are not ampgate's own code. h11 did the same in pure Python at ~140 µs per POST.
With httptools a POST costs no more than with the hand-written parser it replaced
(median 23 µs against 27 µs, measured as above, 10 rounds). The request is a few lines
of bytes written here, with CR/LF refused in every value.

- Connections (TLS for ``https``, default verification) are kept open and reused; one
  request at a time on each, no limit on their number (the worker bounds its in-flight
  deliveries). A reused connection found closed by the server before any byte of the
  answer is replaced once (the usual stale keep-alive race); other failures surface.
- ``timeout_s`` bounds the whole exchange (connect included, ``connect_s`` bounds the
  connect alone); a connection that timed out or failed is closed, never reused.
- Answers: 1xx interim answers are skipped (llhttp completes each as a message of its
  own); a connection is reused only after a complete keep-alive answer, its body read
  up to ``MAX_DRAIN`` bytes. An answer whose connection will not be kept (``Connection:
  close``, HTTP/1.0, a body that runs to the close, or longer than ``MAX_DRAIN``) is
  returned at its head and the connection closed. Redirects are not followed (the
  caller sees the 3xx).
- Header values with CR or LF are refused (``ValueError``): no header injection.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

MAX_DRAIN = 64 * 1024        # answer body bytes read to keep the connection
MAX_HEAD = 64 * 1024         # an answer's status line and headers
IDLE_S = 15.0                # an idle connection older than this is not reused (aiohttp's default)


class HttpError(Exception):
    """No usable HTTP answer; the class name is the short error a caller may log."""


class ConnectError(HttpError):
    pass


class ServerDisconnectedError(HttpError):
    pass


class BadResponseError(HttpError):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names lowercased; a repeated header keeps its last value


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; its llhttp parser reads the answers one after another."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._got_bytes = False
        self._headers: dict[str, str] = {}
        self._response: Response | None = None  # set at the final (non-1xx) head
        self._head_bytes = 0
        self._drained = 0

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ServerDisconnectedError("the server closed the connection"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:  # HttpParserUpgrade is no subclass of it
            self._fail(BadResponseError(f"malformed answer: {exc}"))
            self.close()
        except httptools.HttpParserUpgrade:
            self._fail(BadResponseError("unexpected upgrade"))
            self.close()
        if self._response is None:  # llhttp sets no limit on a head's size
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(BadResponseError("malformed answer: head too long"))
                self.close()

    # -- llhttp callbacks (each answer: begin, headers, head complete, body, complete) ----

    def on_message_begin(self) -> None:
        if self._response is not None:  # a second answer to one request: out of step
            self.close()
        self._headers = {}  # an interim 1xx answer's headers are dropped with it

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._response is None:  # not the trailers of a chunked body
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._response is not None:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: completed by llhttp, the answer follows
            if status == 101:
                self._fail(BadResponseError("unexpected 101"))
                self.close()
            return
        self._response = Response(status, self._headers)
        if (not self._parser.should_keep_alive()
                or int(self._headers.get("content-length", 0)) > MAX_DRAIN):
            # The connection will not be reused (close, HTTP/1.0, a body that runs to the
            # close, or one too long to drain): the body is not worth waiting for.
            self._finish(keep=False)

    def on_body(self, body: bytes) -> None:
        self._drained += len(body)
        if self._drained > MAX_DRAIN and not self.closed:  # a long chunked body
            self._finish(keep=False)

    def on_message_complete(self) -> None:
        if self._response is not None:  # not an interim 1xx answer
            self._finish(keep=True)

    # -- use ------------------------------------------------------------------------------

    @property
    def got_bytes(self) -> bool:
        return self._got_bytes

    async def request(self, data: bytes) -> Response:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._got_bytes = False
        self._response = None
        self._head_bytes = self._drained = 0
        self.transport.write(data)
        try:
            return await waiter
        finally:
            self._waiter = None

    @property
    def reusable(self) -> bool:
        # Only _finish(keep=True) leaves a connection open once an answer was asked for.
        return not self.closed and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self, *, keep: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._response)
        if not keep:
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class Origin:
    """Keep-alive connections to the origin of ``url``; ``post`` sends to its path."""

    def __init__(self, url: str, *, timeout_s: float, connect_s: float,
                 headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {parts.scheme!r}")
        self._host = parts.hostname or ""
        default_port = 443 if parts.scheme == "https" else 80
        self._port = parts.port or default_port
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self._host}]" if ":" in self._host else self._host
        if self._port != default_port:
            host += f":{self._port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = {"Host": host, **headers, "Accept": "*/*"}
        if parts.username is not None:  # userinfo in the URL: Basic auth, as aiohttp sends it
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            fixed["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        _check_header_values([target, *fixed.values()])
        self._head = (f"POST {target} HTTP/1.1\r\n"
                      + "".join(f"{k}: {v}\r\n" for k, v in fixed.items())).encode("latin-1")
        self._timeout_s = timeout_s
        self._connect_s = connect_s
        self._idle: list[_Connection] = []   # most recently used last
        self._busy: set[_Connection] = set()

    async def post(self, body: bytes, headers: dict[str, str]) -> Response:
        _check_header_values(headers.values())
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = b"".join((self._head, extra.encode("latin-1"),
                         b"Content-Length: %d\r\n\r\n" % len(body), body))
        async with asyncio.timeout(self._timeout_s):
            while True:
                conn, reused = await self._acquire()
                try:
                    response = await conn.request(data)
                except ServerDisconnectedError:
                    self._discard(conn)
                    if reused and not conn.got_bytes:
                        continue  # closed by the server while idle: try a fresh connection
                    raise
                except BaseException:
                    self._discard(conn)
                    raise
                self._release(conn)
                return response

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and now - conn.idle_since < IDLE_S:
                self._busy.add(conn)
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_s):
                _, conn = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None)
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
        self._busy.add(conn)
        return conn, False

    def _release(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if conn.reusable:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def _discard(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()

    async def close(self) -> None:
        conns = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _check_header_values(values: Iterable[str]) -> None:
    for value in values:
        if "\r" in value or "\n" in value:
            raise ValueError("header values must not contain CR or LF")
