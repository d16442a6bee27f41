"""A small HTTP/1.1 client for one origin: POST with keep-alive connections, nothing else.

Why not aiohttp's ClientSession: per delivery it cost ~120 µs of CPU (request and
response objects, multidicts, cookie and tracing hooks, stream readers), against ~16 µs
for a bare protocol doing the same exchange (both measured to the same local receiver,
32 at a time); that was most of the worker's work per webhook. A webhook POST needs
little of it: one origin per subscription, a body of bytes, the status and two headers
of the answer, the answer's body thrown away.

- Connections (TLS for ``https``, default verification) are kept open and reused; one
  request at a time on each, no limit on their number (the worker bounds its in-flight
  deliveries). A reused connection found closed by the server before any byte of the
  answer is replaced once (the usual stale keep-alive race); other failures surface.
- ``timeout_s`` bounds the whole exchange (connect included, ``connect_s`` bounds the
  connect alone); a connection that timed out or failed is closed, never reused.
- Answers: 1xx interim heads are skipped; bodies by Content-Length, chunked, or up to
  the close; only ``MAX_DRAIN`` bytes are read to keep a connection, a longer body
  closes it instead. Redirects are not followed (the caller sees the 3xx).
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


_NO_BODY = frozenset({204, 304})
_SIZE_LINE, _TRAILERS = -1, -2  # chunked states besides "bytes left in this chunk"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; parses one answer per request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._got_bytes = False
        self._keep = True
        self._response: Response | None = None
        self._body_left = 0          # Content-Length mode: bytes still to skip
        self._chunked = False
        self._chunk_left = _SIZE_LINE  # chunked: bytes left in this chunk and its CRLF
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
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(BadResponseError(f"malformed answer: {exc}"))
            self.close()

    # -- use ------------------------------------------------------------------------------

    @property
    def got_bytes(self) -> bool:
        return self._got_bytes

    async def request(self, data: bytes) -> Response:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._got_bytes = False
        self._keep = True
        self._response = None
        self._buf.clear()
        self._chunked = False
        self._body_left = self._drained = 0
        self._chunk_left = _SIZE_LINE
        self.transport.write(data)
        try:
            return await waiter
        finally:
            self._waiter = None

    @property
    def reusable(self) -> bool:
        return self._keep and not self.closed and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        self._keep = False
        if self.transport is not None:
            self.transport.close()

    # -- parsing --------------------------------------------------------------------------

    def _parse(self) -> None:
        if self._response is None and not self._parse_head():
            return
        if self._waiter is None or self._waiter.done():
            return
        if self._chunked:
            self._parse_chunks()
            return
        step = min(self._body_left, len(self._buf))
        del self._buf[:step]
        self._body_left -= step
        if not self._body_left:
            self._finish(keep=self._keep)

    def _parse_head(self) -> bool:
        """True once the final (non-1xx) head is parsed."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise ValueError("head too long")
                return False
            if self._head(end):
                return True

    def _head(self, end: int) -> bool:
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[:end + 4]
        version, status_text = lines[0].split(" ", 2)[:2]
        status = int(status_text)
        if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
            raise ValueError("not an HTTP/1.x status line")
        if 100 <= status < 200:
            if status == 101:
                raise ValueError("unexpected 101")
            return False  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        self._keep = ("close" not in connection
                      and (version == "HTTP/1.1" or "keep-alive" in connection))
        self._response = Response(status, headers)
        if status in _NO_BODY:
            self._body_left = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            self._body_left = int(headers["content-length"])
            if self._body_left < 0:
                raise ValueError("negative Content-Length")
            if self._body_left > MAX_DRAIN:  # not worth reading: answer now, drop the connection
                self._finish(keep=False)
        else:  # the body runs to the close: not worth waiting for, the status is known
            self._finish(keep=False)
        return True

    def _parse_chunks(self) -> bool:
        """Skip chunked body bytes; True when the answer is finished."""
        buf = self._buf
        while True:
            if self._chunk_left == _SIZE_LINE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return False
                size = int(bytes(buf[:eol]).split(b";", 1)[0].strip(), 16)
                del buf[:eol + 2]
                if size == 0:
                    self._chunk_left = _TRAILERS
                else:
                    self._chunk_left = size + 2
            if self._chunk_left == _TRAILERS:  # skipped up to a blank line
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return False
                del buf[:eol + 2]
                if eol == 0:
                    self._finish(keep=self._keep)
                    return True
                continue
            step = min(self._chunk_left, len(buf))
            del buf[:step]
            self._drained += step
            self._chunk_left -= step
            if self._drained > MAX_DRAIN:
                self._finish(keep=False)
                return True
            if self._chunk_left:
                return False
            self._chunk_left = _SIZE_LINE

    def _finish(self, *, keep: bool) -> None:
        self._keep = keep and not self._buf  # leftover bytes: out of step, do not reuse
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._response)
        if not self._keep:
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
