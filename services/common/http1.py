"""A small HTTP/1.1 client for one origin, with keep-alive connections: the gateway's
upstream calls and the webhook worker's deliveries.

Why not aiohttp's ClientSession: per exchange it cost ~110 µs of CPU (request and
response objects, multidicts, cookie and tracing hooks, stream readers), against ~25 µs
for a bare protocol doing the same exchange (both measured to bench/webhook_receiver.py,
32 at a time, uvloop). For a webhook that was most of the worker's work; for a passport
write through the gateway, a fifth of its main thread. Neither needs the rest: one
origin per client, a body of bytes, the status, the headers and the body of the answer.

Why httptools: the answers are parsed by llhttp (Node's HTTP parser, in C; the binding
uvicorn uses), so status line, headers, Content-Length / chunked framing, trailers and
1xx are not ampgate's own code. h11 did the same in pure Python at ~140 µs per POST.
The request is a few lines of bytes written here, with CR/LF refused in every value.

- Connections (TLS for ``https``, default verification) are kept open and reused; one
  request at a time on each, no limit on their number (callers bound their in-flight
  requests). A reused connection found closed by the server before any byte of the
  answer is replaced once (the usual stale keep-alive race) when the caller allows it
  (``replay_stale``: not for a POST the upstream may have acted on); other failures surface.
- ``idle_s``: an idle connection is reused for that long at most, and never past the
  server's own idle timeout if its answers announce one (``Keep-Alive: timeout=N``, less
  a second). One the server closed while idle is dropped as soon as its close arrives.
- ``timeout_s`` (if given) bounds the whole exchange, connect included; ``connect_s``
  bounds the connect alone. A connection that timed out, failed or was cancelled is
  closed, never reused.
- Answers: 1xx interim answers are skipped (llhttp completes each as a message of its
  own). ``body_limit=None`` (webhooks): the body is drained up to ``MAX_DRAIN`` bytes and
  thrown away; an answer whose connection will not be kept (``Connection: close``,
  HTTP/1.0, a body that runs to the close, or longer than ``MAX_DRAIN``) is returned at
  its head and the connection closed. ``body_limit=N``: the body is read whole, a body
  that runs to the close included; a longer one raises ``BodyTooLarge`` as soon as that
  is known (its Content-Length, or the bytes so far) and the connection is closed.
  Content-Encoding is the caller's business. Redirects are not followed.
- Header values with CR or LF are refused (``ValueError``): no header injection.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import httptools
from multidict import CIMultiDict

MAX_DRAIN = 64 * 1024        # answer body bytes read (and dropped) to keep the connection
MAX_HEAD = 64 * 1024         # an answer's status line and headers
IDLE_S = 15.0                # an idle connection older than this is not reused (aiohttp's default)
KEEP_ALIVE_MARGIN_S = 1.0    # under a server's own ``Keep-Alive: timeout=N``: its close may be on the way
_NO_BODY = frozenset({204, 304})


class HttpError(Exception):
    """No usable HTTP answer; the class name is the short error a caller may log."""


class ConnectError(HttpError):
    pass


class ServerDisconnectedError(HttpError):
    pass


class BadResponseError(HttpError):
    pass


class BodyTooLarge(HttpError):
    """The answer's body is longer than the caller's ``body_limit``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"a body over the limit (status {status})")
        self.status = status


@dataclass(frozen=True)
class Response:
    status: int
    headers: CIMultiDict[str]  # as sent, names case-insensitive; trailers are not in it
    body: bytes = b""  # with body_limit=None (drained), always empty
    content_type: str = field(default="", compare=False)  # media type, lower case


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; its llhttp parser reads the answers one after another."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.keep_s: float | None = None  # the server's idle timeout (Keep-Alive), if it said
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._got_bytes = False
        self._fields: list[tuple[str, str]] = []  # the head being read
        self._headers: CIMultiDict[str] = CIMultiDict()  # of the final answer
        self._status = 0  # of the final (non-1xx) answer, once its head is complete
        self._head_bytes = 0
        self._limit: int | None = None  # None: drain the body; else read up to this many bytes
        self._head_only = False
        self._chunks: list[bytes] = []
        self._body_bytes = 0
        self._until_close = False  # the body runs to the close (no length, not chunked)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_close and self._status and self._limit is not None:
            self._finish(keep=False)  # the close is the end of this body
            return
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
        if not self._status:  # llhttp sets no limit on a head's size
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(BadResponseError("malformed answer: head too long"))
                self.close()

    # -- llhttp callbacks (each answer: begin, headers, head complete, body, complete) ----

    def on_message_begin(self) -> None:
        if self._status:  # a second answer to one request: out of step
            self.close()
        self._fields = []  # an interim 1xx answer's headers are dropped with it

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._status:  # not the trailers of a chunked body
            self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._status:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: completed by llhttp, the answer follows
            if status == 101:
                self._fail(BadResponseError("unexpected 101"))
                self.close()
            return
        self._status = status
        self._headers = headers = CIMultiDict(self._fields)
        length = int(headers.get("content-length", -1))
        if self._head_only:  # an answer to HEAD has no body, whatever its headers say
            self._finish(keep=False)
            return
        if self._limit is None:
            if not self._parser.should_keep_alive() or length > MAX_DRAIN:
                # The connection will not be reused (close, HTTP/1.0, a body that runs to
                # the close, or one too long to drain): the body is not worth waiting for.
                self._finish(keep=False)
            return
        if length > self._limit:
            self._fail(BodyTooLarge(status))
            self.close()
            return
        self._until_close = (length < 0 and status not in _NO_BODY
                             and "chunked" not in headers.get("transfer-encoding", "").lower())

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._limit is None:
            if self._body_bytes > MAX_DRAIN and not self.closed:  # a long chunked body
                self._finish(keep=False)
            return
        if self._body_bytes > self._limit:
            self._fail(BodyTooLarge(self._status))
            self.close()
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status:  # not an interim 1xx answer
            self._finish(keep=True)

    # -- use ------------------------------------------------------------------------------

    @property
    def got_bytes(self) -> bool:
        return self._got_bytes

    async def request(self, data: bytes, limit: int | None, head_only: bool) -> Response:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._got_bytes = self._until_close = False
        self._status = self._head_bytes = self._body_bytes = 0
        self._limit, self._head_only = limit, head_only
        self._chunks = []
        self.transport.write(data)
        try:
            return await waiter
        finally:
            self._waiter = None
            self._chunks = []

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
            ctype = self._headers.get("content-type", "")
            self._waiter.set_result(Response(
                self._status, self._headers, b"".join(self._chunks),
                ctype.partition(";")[0].strip().lower()))
        if not keep:
            self.close()
        elif "keep-alive" in self._headers:
            self.keep_s = _keep_alive_timeout(self._headers["keep-alive"])

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class Origin:
    """Keep-alive connections to the origin (scheme, host, port) of ``url``.

    ``headers`` go with every request (``Host`` and Basic auth from the URL's userinfo
    are added here); ``post`` sends to the URL's own path and query, ``request`` to any."""

    def __init__(self, url: str, *, connect_s: float, headers: Mapping[str, str],
                 timeout_s: float | None = None, idle_s: float = IDLE_S) -> None:
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
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = {"Host": host, **headers}
        if parts.username is not None:  # userinfo in the URL: Basic auth, as aiohttp sends it
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            fixed["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        _check_header_values([self.target, *fixed.values()])
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._post_head = b"POST %s HTTP/1.1\r\n%s" % (self.target.encode("latin-1"), self._fixed)
        self._timeout_s = timeout_s
        self._connect_s = connect_s
        self._idle_s = idle_s
        self._idle: list[_Connection] = []   # most recently used last
        self._busy: set[_Connection] = set()

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST ``body`` to the URL's path; the answer's body is drained, not returned."""
        return await self._exchange(self._post_head, headers, body, limit=None,
                                    head_only=False, replay_stale=True)

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes | None = None, *, body_limit: int,
                      replay_stale: bool) -> Response:
        """``method`` to ``target`` (an origin-form path and query, already encoded); the
        answer's body is read whole, up to ``body_limit`` bytes (else BodyTooLarge)."""
        _check_header_values((method, target))
        head = b"%s %s HTTP/1.1\r\n%s" % (method.encode("latin-1"), target.encode("latin-1"),
                                           self._fixed)
        return await self._exchange(head, headers, body, limit=body_limit,
                                    head_only=method == "HEAD", replay_stale=replay_stale)

    async def _exchange(self, head: bytes, headers: Mapping[str, str], body: bytes | None,
                        *, limit: int | None, head_only: bool, replay_stale: bool) -> Response:
        _check_header_values(headers.values())
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        if body is None:
            data = b"%s%s\r\n" % (head, extra)
        else:
            data = b"%s%sContent-Length: %d\r\n\r\n%s" % (head, extra, len(body), body)
        if self._timeout_s is None:
            return await self._send(data, limit, head_only, replay_stale)
        async with asyncio.timeout(self._timeout_s):
            return await self._send(data, limit, head_only, replay_stale)

    async def _send(self, data: bytes, limit: int | None, head_only: bool,
                    replay_stale: bool) -> Response:
        while True:
            conn, reused = await self._acquire()
            try:
                response = await conn.request(data, limit, head_only)
            except ServerDisconnectedError:
                self._discard(conn)
                if reused and not conn.got_bytes and replay_stale:
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
            idle_s = self._idle_s if conn.keep_s is None else min(self._idle_s, conn.keep_s)
            if conn.reusable and now - conn.idle_since < idle_s:
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


def _keep_alive_timeout(value: str) -> float | None:
    """``timeout=N`` of a Keep-Alive header, less the margin; None if it has none."""
    for param in value.split(","):
        name, _, number = param.partition("=")
        if name.strip().lower() == "timeout":
            try:
                return max(0.0, float(number.strip()) - KEEP_ALIVE_MARGIN_S)
            except ValueError:
                return None
    return None


def _check_header_values(values: Iterable[str]) -> None:
    for value in values:
        if "\r" in value or "\n" in value:
            raise ValueError("header values must not contain CR or LF")
