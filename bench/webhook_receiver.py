"""A local webhook endpoint for the workers benchmark: answers 204 to every POST and
counts deliveries (and distinct webhook-ids) for GET /count. It also checks order: per
endpoint path and per subject (passport id), the `data.passport.performance.cycles` of
each delivery (the bench's version counter) must not go back; a repeat of the last one
(a retry) counts as a duplicate, an older one as out of order. One process, 127.0.0.1.

    python bench/webhook_receiver.py --port 9100

It is a bare asyncio.Protocol HTTP/1.1 server (keep-alive, pipelining, Content-Length
and chunked bodies), not aiohttp: it runs on the same 2 cores as the worker and the
broker, and the aiohttp version (~6-7k POST/s alone to wrk -c32, ~3k under load) was the
ceiling of the figure it is meant to measure. GET /count, GET /healthz; anything else 404.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

MAX_HEAD = 64 * 1024


class Tally:
    """What /count reports; the order check per (endpoint path, subject)."""

    def __init__(self) -> None:
        self.state: dict[str, object] = {
            "received": 0, "first_at": None, "last_at": None, "out_of_order": 0,
            "duplicates": 0, "unordered_bodies": 0, "order_checked": 0}
        self.ids: set[str] = set()
        self.last: dict[tuple[str, str], int] = {}

    def delivery(self, path: str, webhook_id: str, body: bytes) -> None:
        state = self.state
        try:
            event = orjson.loads(body)
            key = (path, str(event["subject"]))
            seq = int(event["data"]["passport"]["performance"]["cycles"])
        except (ValueError, KeyError, TypeError):
            state["unordered_bodies"] += 1
        else:
            before = self.last.get(key)
            state["order_checked"] += before is not None
            if before is not None and seq < before:
                state["out_of_order"] += 1
            elif before is not None and seq == before:
                state["duplicates"] += 1
            else:
                self.last[key] = seq
        now = time.time()
        state["received"] += 1
        state["first_at"] = state["first_at"] or now
        state["last_at"] = now
        self.ids.add(webhook_id)

    def count(self) -> bytes:
        return orjson.dumps({**self.state, "distinct_ids": len(self.ids)})


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
NO_CONTENT_CLOSE = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"


def response(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class HttpProtocol(asyncio.Protocol):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        close = False
        while not close:
            request = self._next_request()
            if request is None:
                break
            method, target, headers, body = request
            close = headers.get("connection", "").lower() == "close"
            out.append(self._answer(method, target, headers, body, close))
        if out:
            self.transport.writelines(out)
        if close:
            self.transport.close()

    def _next_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        """One complete request off the buffer, or None (wait for more bytes)."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._bad()
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            self._bad()
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _dechunk(buf, start)
            if parsed is None:
                return None
            body, consumed = parsed
        else:
            length = int(headers.get("content-length") or 0)
            if len(buf) < start + length:
                return None
            body, consumed = bytes(buf[start:start + length]), start + length
        del buf[:consumed]
        return method, target, headers, body

    def _answer(self, method: str, target: str, headers: dict[str, str], body: bytes,
                close: bool) -> bytes:
        path = target.split("?", 1)[0]
        if method == "POST" and (path == "/hook" or path.startswith("/hook/")):
            self.tally.delivery(path, headers.get("webhook-id", ""), body)
            return NO_CONTENT_CLOSE if close else NO_CONTENT
        if method == "GET" and path == "/count":
            return response("200 OK", self.tally.count(), "application/json")
        if method == "GET" and path == "/healthz":
            return response("200 OK", b"ok")
        return response("404 Not Found", b"not found")

    def _bad(self) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        self.transport.close()
        self.buf.clear()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """(body, bytes consumed) of a complete chunked body at ``pos``, None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)  # no trailers expected: the blank line
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos:pos + size]))
        pos += size + 2


async def serve(port: int) -> None:
    tally = Tally()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(tally), "127.0.0.1", port,
                                      backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
