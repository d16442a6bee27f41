"""An open-loop HTTP/1.1 client for the write-latency bench: request i is written at its
planned time whatever the answers before it, each on an idle keep-alive connection (a
pool opened before the run), and its answer's time is taken in ``data_received``.

Why not aiohttp's ClientSession: at 1,000 PUTs/s it cost ~0.55 ms of CPU per request on
the same 2 cores as the gateway, and its answers were seen late in a busy loop (timer lag
p99 10-16 ms), which the latency figures then carried.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, Content-Length answers."""

    def __init__(self, client: OpenLoopClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.seq: int | None = None  # the request in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, seq: int, raw: bytes) -> None:
        self.seq = seq
        assert self.transport is not None
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.seq is not None:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = bytes(self.buf[:head_end]).decode("latin-1").split("\r\n")
            length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                           if k.strip().lower() == "content-length"), None)
            if length is None:
                raise ValueError("an answer without Content-Length")
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            del self.buf[:end]
            seq, self.seq = self.seq, None
            self.client.answered(self, seq, int(lines[0].split()[1]), time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class OpenLoopClient:
    """``answers``: seq -> (status, perf_counter time of the last byte); -1 for a
    connection lost with the request in flight."""

    def __init__(self, host: str, port: int, connections: int) -> None:
        self.host, self.port, self.connections = host, port, connections
        self.answers: dict[int, tuple[int, float]] = {}
        self._idle: list[_Conn] = []
        self._conns: list[_Conn] = []
        self._queued: deque[tuple[int, bytes]] = deque()
        self._sent = 0
        self._all_answered = asyncio.Event()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.connections):
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            self._conns.append(conn)
            self._idle.append(conn)

    def send(self, seq: int, raw: bytes) -> None:
        self._sent += 1
        if self._idle:
            self._idle.pop().send(seq, raw)
        else:
            self._queued.append((seq, raw))  # every connection busy: the next free one

    def answered(self, conn: _Conn, seq: int, status: int, at: float) -> None:
        self.answers[seq] = (status, at)
        if self._queued:
            conn.send(*self._queued.popleft())
        else:
            self._idle.append(conn)
        if len(self.answers) == self._sent:
            self._all_answered.set()

    def lost(self, conn: _Conn) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.seq is not None:
            self.answers[conn.seq] = (-1, time.perf_counter())
            conn.seq = None
            if len(self.answers) == self._sent:
                self._all_answered.set()

    async def wait(self, timeout_s: float) -> None:
        if len(self.answers) < self._sent:
            self._all_answered.clear()
            await asyncio.wait_for(self._all_answered.wait(), timeout_s)

    def close(self) -> None:
        for conn in self._conns:
            if conn.transport is not None:
                conn.transport.close()
