"""The cold-burst client: n keep-alive connections opened first (so the listen backlog
plays no part), then one GET written on each in a tight loop; the latency of each is its
last body byte − the burst start.

One ``asyncio.Protocol`` per connection on uvloop, the time taken in ``data_received``
itself: reading 200 answers costs the client ~2 ms. The earlier client (a StreamReader
and a coroutine per answer, on asyncio's own loop) spent 10–15 ms reading them, which
the slowest answer then included; the same client measures nginx.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from services.common.runner import run


class _Answer(asyncio.Protocol):
    """One HTTP/1.1 answer (Content-Length, or chunked up to its last chunk)."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.buf = bytearray()
        self.status = 0
        self.body_bytes = 0
        self.at = 0.0
        self._end: int | None = None  # buffer length at which the answer is complete
        self._chunked = False
        self._head = 0

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        buf = self.buf
        buf += data
        if self._end is None and not self._chunked:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            # Parsed with a few C calls: the client's own time per answer is part of every
            # answer after it (200 on one loop; 1.8 us each, 4.2 with a dict of the fields).
            self._head = head_end + 4
            head = bytes(buf[:self._head]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                at += 17
                self._end = self._head + int(head[at:head.index(b"\r\n", at)])
            elif b"\r\ntransfer-encoding: chunked\r\n" in head:
                self._chunked = True
            else:
                raise ValueError("an answer without Content-Length or chunked framing")
        if self._end is not None and len(buf) >= self._end:
            self._finish(self._end - self._head)
        elif self._chunked and buf.endswith(b"\r\n0\r\n\r\n"):
            self._finish(len(buf) - self._head)  # framing bytes included: a size only

    def _finish(self, body_bytes: int) -> None:
        self.at = time.perf_counter()
        self.body_bytes = body_bytes
        self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the answer"))


async def _burst(ports: list[int], path: str, n: int, headers: dict[str, str],
                 timeout_s: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    answers: list[_Answer] = []
    transports: list[asyncio.Transport] = []
    for i in range(0, n, 50):
        opened = await asyncio.gather(*(
            loop.create_connection(lambda: _Answer(loop.create_future()), "127.0.0.1",
                                   ports[(i + j) % len(ports)])
            for j in range(min(50, n - i))))
        for transport, answer in opened:
            transports.append(transport)
            answers.append(answer)
    await asyncio.sleep(0.3)  # every connection accepted before the burst
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raws = [f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{extra}\r\n".encode() for p in ports]
    try:
        t0 = time.perf_counter()
        for i, transport in enumerate(transports):
            transport.write(raws[i % len(ports)])
        await asyncio.wait_for(asyncio.gather(*(a.done for a in answers)), timeout_s)
    finally:
        for transport in transports:
            transport.close()
    latencies = sorted((a.at - t0) * 1000 for a in answers)
    return {"requests": n, "statuses": dict(Counter(a.status for a in answers)),
            "body_sizes": sorted({a.body_bytes for a in answers}),
            "fastest_ms": round(latencies[0], 1), "p50_ms": round(latencies[len(latencies) // 2], 1),
            "slowest_ms": round(latencies[-1], 1)}


def cold_burst(ports: list[int], path: str, n: int, headers: dict[str, str], *,
               timeout_s: float = 30) -> dict[str, Any]:
    """One burst of ``n`` GETs of ``path``, connections round-robin over ``ports``."""
    return run(_burst(ports, path, n, headers, timeout_s))
