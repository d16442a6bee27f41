"""structlog set-up: one processor chain, JSON in production, console on a terminal."""

from __future__ import annotations

import importlib.util
import logging
import sys
from contextvars import ContextVar

import orjson
import structlog
import structlog.tracebacks

from services.common.settings import LogSettings

# Tracebacks without local variables in every renderer: locals hold tokens, keys and
# documents. As data for JSON; for the console, Rich (when installed) with show_locals off:
# structlog's default console formatters (Rich, better-exceptions) print every local.
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def _console_tracebacks() -> structlog.typing.ExceptionRenderer:
    if importlib.util.find_spec("rich") is None:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)


# (request_id, traceparent) of the request being handled. One ContextVar set per request
# is much cheaper than structlog's clear_contextvars()+bind_contextvars() on a cache hit.
REQUEST_CONTEXT: ContextVar[tuple[str, str] | None] = ContextVar("ampgate_request", default=None)


# Whether info lines are emitted: the per-request line is skipped outright when not, so a
# cache hit with access logging off pays nothing for it.
INFO_ENABLED = True
DEBUG_ENABLED = True  # likewise for debug lines on hot paths (the change detector)


def add_request_context(logger: object, method: str, event_dict: dict) -> dict:
    ctx = REQUEST_CONTEXT.get()
    if ctx is not None:
        event_dict.setdefault("request_id", ctx[0])
        event_dict.setdefault("traceparent", ctx[1])
    return event_dict


def configure_logging(settings: LogSettings, *, stream=None) -> None:
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console":
        renderer: list[structlog.types.Processor] = [
            structlog.dev.ConsoleRenderer(exception_formatter=_console_tracebacks())]
        factory = structlog.PrintLoggerFactory(stream)
    else:
        renderer = [
            _DICT_TRACEBACKS,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(stream.buffer if hasattr(stream, "buffer") else stream)
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    global INFO_ENABLED, DEBUG_ENABLED
    INFO_ENABLED = level <= logging.INFO
    DEBUG_ENABLED = level <= logging.DEBUG
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Route stdlib loggers (aiohttp, aiokafka) through the same renderer at WARNING+.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *(renderer if fmt == "console" else [_DICT_TRACEBACKS,
                                                      structlog.processors.JSONRenderer()]),
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
