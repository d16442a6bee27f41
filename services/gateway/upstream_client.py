"""One HTTP client per upstream: URL joining, credentials, timeouts, bounded
concurrency, retries for idempotent reads, one replay after a 401, a circuit breaker,
metrics. Every failure leaves here as a services.gateway.errors exception.

Bodies are read and decoded here, once: a body over ``max_body_bytes``
(``AMPGATE_UPSTREAM__MAX_BODY_BYTES``) is never read whole, and a 2xx answer to a GET
(but a 204) must be a JSON document (object or array), else UpstreamBadBody (502) —
never a 500 further in. The decoded document is ``UpstreamResponse.data``. A write's
answer is decoded too but need not be JSON: the write happened, its answer passes on.

Calls go over the client's own keep-alive connections (services/common/http1.py). One
the upstream closed while it was idle is replaced once, before any byte of the answer,
for methods idempotent by HTTP (``REPLAY_STALE``); a POST fails then, as it always did.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import orjson
import structlog
from multidict import CIMultiDictProxy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from services.common import http1
from services.common.settings import UpstreamSettings
from services.gateway.errors import (
    CircuitOpen,
    UpstreamBadBody,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.tokens import Credential

log = structlog.get_logger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD"})  # retried; writes never are (a lost answer ≠ a lost write)
# Sent again on a fresh connection when a kept one turns out closed by the upstream before
# any byte of the answer (it closed while idle): idempotent by HTTP (RFC 9110 §9.2.2).
# A POST is not: the upstream may have acted on it before closing.
REPLAY_STALE = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
USER_AGENT = "ampgate"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 5.0  # longer Retry-After: give up now rather than hold the client
EXCERPT_CHARS = 200
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_CHUNK_BYTES = 256 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    data: Any = None  # the decoded body (None: empty, or a write's answer that is not JSON)

    def json(self) -> Any:
        """The decoded body (decoded once, by the client)."""
        return self.data


class _TooLarge(Exception):
    pass


def _decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from its Content-Encoding (gzip or deflate, as aiohttp accepts);
    _TooLarge once the decoded bytes exceed ``limit`` (a small gzip bomb is caught too)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ValueError(f"Content-Encoding {encoding!r}")
    try:  # gzip or zlib-wrapped deflate (the header tells), else a raw deflate stream
        decoder = zlib.decompressobj(wbits=47)
        out = decoder.decompress(body, limit + 1)
    except zlib.error:
        if encoding != "deflate":
            raise ValueError("a gzip body that does not decode") from None
        decoder = zlib.decompressobj(wbits=-15)
        try:
            out = decoder.decompress(body, limit + 1)
        except zlib.error:
            raise ValueError("a deflate body that does not decode") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise _TooLarge
    return out


def safe_excerpt(body: bytes, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable piece of an upstream body for problem details and logs."""
    text = body[: limit * 4].decode("utf-8", errors="replace")
    return _CONTROL.sub(" ", text).strip()[:limit]


def join_url(base_url: str, path: str) -> URL:
    """``http://h/prefix`` + ``/v1/x`` → ``http://h/prefix/v1/x`` (the prefix survives,
    unlike RFC 3986 resolution of an absolute path)."""
    base = URL(str(base_url))
    prefix = base.path.rstrip("/")
    return base.with_path(prefix + "/" + path.lstrip("/"), encoded=False).with_query(None)


class CircuitBreaker:
    """Consecutive failures open it; after ``reset_s`` one probe goes through
    (half-open); a success closes it, a failure opens it again."""

    def __init__(self, upstream: str, failures: int, reset_s: float, metrics: GatewayMetrics,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self._threshold = failures
        self._reset_s = reset_s
        self._metrics = metrics
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._state_gauge = metrics.circuit_state.labels(upstream)  # resolved once
        self._gauge(0)

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() >= self._opened_at + self._reset_s:
            return "half_open"
        return "open"

    def retry_after(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._reset_s - self._clock())

    def check(self) -> None:
        """Raise CircuitOpen if a call could not go out now (claims nothing)."""
        if self._opened_at is None:
            return
        if self._probing:  # one probe at a time; the others fail fast
            raise CircuitOpen(self.upstream, self._reset_s)
        remaining = self.retry_after()
        if remaining > 0:
            raise CircuitOpen(self.upstream, remaining)

    def before_call(self) -> bool:
        """Raise CircuitOpen unless a call may go out now; True if it is the probe."""
        self.check()
        if self._opened_at is None:
            return False
        self._probing = True
        self._gauge(1)
        log.info("upstream_circuit_half_open", upstream=self.upstream)
        return True

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.info("upstream_circuit_closed", upstream=self.upstream)
        self._failures = 0
        self._opened_at = None
        self._probing = False
        self._gauge(0)

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self._threshold):
            self._opened_at = self._clock()
            self._probing = False
            self._gauge(2)
            log.warning("upstream_circuit_opened", upstream=self.upstream,
                        failures=self._failures, reset_s=self._reset_s)

    def record_abandoned(self, probe: bool) -> None:
        """The call ended without a verdict (cancelled): if it was the probe, let
        another one try."""
        if probe:
            self._probing = False

    def _gauge(self, value: int) -> None:
        self._state_gauge.set(value)


class _Retryable(Exception):
    """One attempt failed in a way worth another try (for idempotent methods)."""

    def __init__(self, error: UpstreamError | None = None, response: UpstreamResponse | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__()
        self.error = error
        self.response = response
        self.retry_after = retry_after


def _given_up(last: _Retryable) -> UpstreamResponse:
    """The last retryable failure, once no attempt is left: its response, or its error."""
    if last.response is not None:
        return last.response
    assert last.error is not None
    raise last.error from None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class UpstreamClient:
    def __init__(
        self,
        name: str,
        settings: UpstreamSettings,
        credential: Credential | None,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 1.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        keepalive_s: float = http1.IDLE_S,
    ) -> None:
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.settings = settings
        # Its own keep-alive connections (services/common/http1.py: ~1/4 of aiohttp's
        # client CPU per call); the base URL's path prefix is joined per request (url()).
        self._origin = http1.Origin(
            str(settings.base_url), connect_s=settings.connect_timeout_s, idle_s=keepalive_s,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json",
                     "Accept-Encoding": "gzip, deflate"})
        self._credential = credential
        self._metrics = metrics
        self._clock = clock
        self._base_url = str(settings.base_url)
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._counted: dict[tuple[str, str], tuple[Any, Any]] = {}  # labelled children
        self._backoff = wait_random_exponential(multiplier=backoff_base_s, max=backoff_max_s)
        self.breaker = CircuitBreaker(name, settings.breaker_failures, settings.breaker_reset_s,
                                      metrics, clock=clock)

    def url(self, path: str) -> URL:
        return join_url(self._base_url, path)

    async def close(self) -> None:
        """Close its connections (idle and in use)."""
        await self._origin.close()

    async def request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
        accept_statuses: Collection[int] = (),
    ) -> UpstreamResponse:
        """Send one logical request; see the module docstring for timeouts and retries.
        Returns 2xx and ``accept_statuses``; raises UpstreamError subclasses otherwise."""
        try:
            return await self._request(operation, method, path, params=params, body=body,
                                       content_type=content_type, request_id=request_id,
                                       traceparent=traceparent, accept_statuses=accept_statuses)
        except CircuitOpen:
            # counted here too, so dashboards see the traffic the breaker turned away
            self._metrics.upstream_requests.labels(self.name, operation, "circuit_open").inc()
            raise

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        body: bytes | None,
        content_type: str | None,
        request_id: str | None,
        traceparent: str | None,
        accept_statuses: Collection[int],
    ) -> UpstreamResponse:
        method = method.upper()
        url = self.url(path)
        if params:
            url = url.with_query(list(params.items()) if isinstance(params, Mapping) else list(params))
        deadline = self._clock() + self.settings.timeout_s
        base_headers: dict[str, str] = {}
        if content_type:
            base_headers["Content-Type"] = content_type
        if request_id:
            base_headers["X-Request-ID"] = request_id
        if traceparent:
            base_headers["traceparent"] = traceparent

        self.breaker.check()  # fail fast before even asking for a token
        cred_headers, token = await self._credential.headers() if self._credential else ({}, "")
        resp = await self._attempts(operation, method, url, body, {**base_headers, **cred_headers},
                                    deadline)
        if (resp.status == 401 and self._credential is not None
                and getattr(self._credential, "refreshable", True)
                and 401 not in accept_statuses):
            # Revoked before expiry: drop it (only if still current, so a burst of 401s
            # makes one refresh), fetch a fresh one, replay once — for any method, since
            # the upstream did nothing with an unauthenticated request.
            log.info("upstream_unauthorized_replay", upstream=self.name, operation=operation)
            await self._credential.invalidate(token)
            cred_headers, token = await self._credential.headers()
            resp = await self._attempts(operation, method, url, body,
                                        {**base_headers, **cred_headers}, deadline)
        if 200 <= resp.status < 300 or resp.status in accept_statuses:
            return self._decoded(operation, method, resp)
        raise UpstreamStatus(self.name, resp.status, safe_excerpt(resp.body))

    def _decoded(self, operation: str, method: str, resp: UpstreamResponse) -> UpstreamResponse:
        """``resp`` with ``data`` set; UpstreamBadBody for a read's 2xx that is not a JSON
        document. Accepted error statuses (``accept_statuses``) are decoded if they can be."""
        strict = method == "GET" and 200 <= resp.status < 300 and resp.status != 204
        if not resp.body and not strict:
            return resp
        try:
            data = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            data = None
        if strict and not isinstance(data, dict | list):
            log.warning("upstream_body_invalid", upstream=self.name, operation=operation,
                        status=resp.status, reason="not_json", bytes=len(resp.body))
            raise UpstreamBadBody(self.name, "a body that is not a JSON document", resp.status)
        return UpstreamResponse(resp.status, resp.body, resp.content_type, resp.headers, data)

    async def _attempts(self, operation: str, method: str, url: URL, body: bytes | None,
                        headers: dict[str, str], deadline: float) -> UpstreamResponse:
        """One attempt, or several with backoff for idempotent methods, within the deadline.

        The first attempt runs bare: most succeed, and building the retrier costs about as
        much as the rest of the attempt's own Python. Only a retryable failure builds it,
        and hands it that failure as its attempt 1, so the waits, stops and logs are the
        ones a retrier running from the start would have made."""
        attempts = 1 + (self.settings.retries if method in IDEMPOTENT else 0)
        try:
            return await self._attempt(operation, method, url, body, headers, deadline)
        except _Retryable as first:
            if attempts == 1:  # what the retrier does then: stop at once, reraise
                return _given_up(first)
            failed: _Retryable | None = first

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hinted = exc.retry_after if isinstance(exc, _Retryable) else None
            return hinted if hinted is not None else self._backoff(state)

        def stop(state: RetryCallState) -> bool:
            if stop_after_attempt(attempts)(state):
                return True
            # no budget left for the wait plus a useful attempt: stop now
            return self._clock() + (state.upcoming_sleep or 0.0) >= deadline

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = (exc.response.status if isinstance(exc, _Retryable) and exc.response
                      else type(exc.error).__name__ if isinstance(exc, _Retryable) else "?")
            log.info("upstream_retry", upstream=self.name, operation=operation,
                     attempt=state.attempt_number, reason=reason,
                     wait_s=round(state.upcoming_sleep or 0.0, 3))

        retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception_type(_Retryable),
                                 before_sleep=before_sleep, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    if failed is not None:  # attempt 1, run above
                        replay, failed = failed, None
                        raise replay
                    return await self._attempt(operation, method, url, body, headers, deadline)
        except _Retryable as last:
            return _given_up(last)
        raise AssertionError("unreachable")  # pragma: no cover

    def _children(self, operation: str, status: str) -> tuple[Any, Any]:
        """The labelled metric children of one (operation, status), resolved once: a
        ``labels()`` call costs a lock and a dict lookup per metric per call."""
        children = self._counted.get((operation, status))
        if children is None:
            children = self._counted[(operation, status)] = (
                self._metrics.upstream_requests.labels(self.name, operation, status),
                self._metrics.upstream_duration.labels(self.name, operation))
        return children

    def _too_large(self, operation: str, status: int) -> UpstreamBadBody:
        log.warning("upstream_body_invalid", upstream=self.name, operation=operation,
                    status=status, reason="too_large", limit=self.max_body_bytes)
        return UpstreamBadBody(self.name, f"a body over {self.max_body_bytes} bytes", status)

    async def _attempt(self, operation: str, method: str, url: URL, body: bytes | None,
                       headers: dict[str, str], deadline: float) -> UpstreamResponse:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise UpstreamTimeout(self.name, self.settings.timeout_s)
        probe = self.breaker.before_call()
        started = time.perf_counter()
        status_label: str | None = None  # None: cancelled, nothing to count
        verdict: bool | None = None  # True success, False failure, None no verdict
        sent = False  # past our own semaphore: a timeout before this is not the upstream's
        try:
            try:
                async with asyncio.timeout(remaining):
                    async with self._semaphore:
                        sent = True
                        raw = await self._origin.request(
                            method, url.raw_path_qs, headers, body,
                            body_limit=self.max_body_bytes, replay_stale=method in REPLAY_STALE)
            except http1.BodyTooLarge as exc:
                status_label, verdict = str(exc.status), exc.status < 500
                raise self._too_large(operation, exc.status) from None
            except TimeoutError:  # includes the connect timeout
                status_label, verdict = "timeout", (False if sent else None)
                raise _Retryable(UpstreamTimeout(self.name, self.settings.timeout_s)) from None
            except http1.HttpError as exc:
                status_label, verdict = "error", False
                # The exception text may hold the address; log the type only.
                log.warning("upstream_connection_failed", upstream=self.name,
                            operation=operation, error=type(exc).__name__)
                raise _Retryable(UpstreamError(
                    self.name, f"{self.name} could not be reached ({type(exc).__name__})"
                )) from None
            status_label, verdict = str(raw.status), raw.status < 500
            payload = raw.body
            encoding = raw.headers.get("Content-Encoding")
            if encoding:
                try:
                    payload = _decompressed(payload, encoding, self.max_body_bytes)
                except _TooLarge:
                    raise self._too_large(operation, raw.status) from None
                except ValueError as exc:  # not what we accept, or it does not decode
                    verdict = False
                    log.warning("upstream_body_invalid", upstream=self.name,
                                operation=operation, status=raw.status, reason="encoding",
                                error=str(exc)[:200])
                    raise UpstreamBadBody(self.name, f"a body that does not decode ({exc})",
                                          raw.status) from None
            resp = UpstreamResponse(status=raw.status, body=payload,
                                    content_type=raw.content_type,
                                    headers=CIMultiDictProxy(raw.headers))
            if resp.status in RETRY_STATUSES:
                hint = _retry_after(resp.headers.get("Retry-After"))
                if hint is not None and (hint > MAX_RETRY_AFTER_S
                                         or self._clock() + hint >= deadline):
                    return resp  # it asks for longer than we can wait: answer now
                raise _Retryable(response=resp, retry_after=hint)
            return resp
        finally:
            if verdict is True:
                self.breaker.record_success()
            elif verdict is False:
                self.breaker.record_failure()
            else:
                self.breaker.record_abandoned(probe)
            if status_label is not None:
                requests, duration = self._children(operation, status_label)
                requests.inc()
                duration.observe(time.perf_counter() - started)

