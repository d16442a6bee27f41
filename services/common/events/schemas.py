"""The compiled event contracts (proto-schemas/, generated into ``_gen`` by
scripts/gen_protos.sh) and the one check every value passes: proto3 JSON that parses
into the topic's message with no unknown fields."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

try:
    from services.common.events._gen.ampgate.events.v1 import (
        change_pb2,
        passport_changed_pb2,
        price_changed_pb2,
    )
except ImportError as exc:  # a checkout where bootstrap has not run yet
    raise ImportError(
        "generated protobuf code is missing: run scripts/gen_protos.sh (bootstrap.sh does)"
    ) from exc

PassportChanged = passport_changed_pb2.PassportChanged
PriceChanged = price_changed_pb2.PriceChanged
Tariff = price_changed_pb2.Tariff
ChangeKind = change_pb2.ChangeKind
Detection = change_pb2.Detection


def check(message_type: type[Message], data: Mapping[str, Any]) -> Message:
    """Parse ``data`` (proto3 JSON as a dict) into ``message_type``; raise
    json_format.ParseError on unknown fields, wrong types or unknown enum names."""
    return json_format.ParseDict(data, message_type(), ignore_unknown_fields=False)


def validate(message_type: type[Message], data: Mapping[str, Any], *,
             json: bytes | None = None) -> None:
    """``check`` without building the message: the same verdict (and the same
    json_format.ParseError), a fraction of the cost for the values we produce.
    ``json``: the bytes ``data`` was just read from with orjson, whose values are all
    valid in a Struct (no lone surrogates, no NaN or infinity, numbers in double
    range); fewer brackets than the fast path's depth bound then means nothing inside
    a Struct needs a look."""
    from_json = json is not None
    shallow = from_json and json.count(b"{") + json.count(b"[") < _MAX_DEPTH
    if not _message_check(message_type.DESCRIPTOR, shallow, from_json)(data):
        check(message_type, data)


# -- the fast path ------------------------------------------------------------------
# ParseDict is pure Python over every value of the document (~0.1 ms an event, most
# of a worker's decode). ``_accepts`` is a quick check that says True only for values
# ParseDict certainly accepts (canonical names and types: the shape our own producers
# emit); anything else (camelCase names, enum numbers, nulls, int64 as strings, deep
# or odd documents, unknown fields...) is decided by ParseDict itself, so what is
# accepted or rejected, and the error text, never change.

_FD = FieldDescriptor
_MAX_DEPTH = 30  # JSON nesting the fast path follows (ParseDict's own bound is 100 levels)
_INT64 = 1 << 63
_SURROGATE = re.compile("[\ud800-\udfff]")


def _plain_text(value: object) -> bool:
    return type(value) is str and (value.isascii() or _SURROGATE.search(value) is None)


def _json_value(value: object, depth: int) -> bool:
    """google.protobuf.Value: any JSON value (numbers in double range, no surrogates)."""
    kind = type(value)
    if kind is str:
        return value.isascii() or _SURROGATE.search(value) is None
    if kind is dict:
        return _json_struct(value, depth)
    if kind is int:
        return -_INT64 <= value < _INT64
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return depth < _MAX_DEPTH and all(_json_value(v, depth + 1) for v in value)
    return value is None or kind is bool


def _json_struct(value: object, depth: int) -> bool:
    return (type(value) is dict and depth < _MAX_DEPTH
            and all(_plain_text(k) and _json_value(v, depth + 1) for k, v in value.items()))


# What rfc3339() writes: UTC, up to microseconds (a year that keeps clear of the edges).
_CANONICAL_TIME = re.compile(r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z")


def _timestamp(value: object) -> bool:
    if type(value) is not str:
        return False
    if _CANONICAL_TIME.fullmatch(value) and value[:4] != "9999":
        try:
            datetime.fromisoformat(value[:19])  # the calendar check strptime does
        except ValueError:
            return False
        return True
    try:
        Timestamp().FromJsonString(value)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def _field_check(field: Any, shallow: bool, from_json: bool
                 ) -> type | Callable[[object], bool] | None:
    """The check of one field's JSON value, or None: leave that field to ParseDict. A
    type (not a function): the value must be of exactly that type, nothing more to see.
    ``from_json``: strings came from orjson, which refuses lone surrogates itself."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return None
    if field.is_repeated:
        if field.type != _FD.TYPE_STRING:
            return None
        if from_json:
            return lambda v: type(v) is list and all(type(x) is str for x in v)
        return lambda v: type(v) is list and all(_plain_text(x) for x in v)
    if field.type == _FD.TYPE_STRING:
        return str if from_json else _plain_text
    if field.type == _FD.TYPE_BOOL:
        return bool
    if field.type == _FD.TYPE_ENUM:
        names = frozenset(field.enum_type.values_by_name)
        return lambda v: type(v) is str and v in names
    if field.type == _FD.TYPE_INT64:
        return lambda v: type(v) is int and -_INT64 <= v < _INT64
    if field.type == _FD.TYPE_DOUBLE:
        return lambda v: (type(v) is int and -_INT64 <= v < _INT64) or (
            type(v) is float and math.isfinite(v))
    if field.type == _FD.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Struct":
            return dict if shallow else (lambda v: _json_struct(v, 0))
        if name == "google.protobuf.Value":
            return (lambda v: v is not None) if shallow else (
                lambda v: v is not None and _json_value(v, 0))
        if name == "google.protobuf.Timestamp":
            return _timestamp
        if name.startswith("google.protobuf."):
            return None
        return _message_check(field.message_type, shallow, from_json)
    return None


@functools.cache
def _message_check(descriptor: Any, shallow: bool, from_json: bool = False
                   ) -> Callable[[object], bool]:
    # Fields whose check is "exactly this type" are compared inline: a call per field
    # was most of the check's cost (the event loop's, in every consumer).
    exact_types: dict[str, type] = {}
    checks: dict[str, Callable[[object], bool] | None] = {}
    for field in descriptor.fields:
        if field.containing_oneof is not None and len(field.containing_oneof.fields) > 1:
            return lambda v: False  # a real oneof: two of its fields set is an error
        check = _field_check(field, shallow, from_json)
        if isinstance(check, type):
            exact_types[field.name] = check
        else:
            checks[field.name] = check

    def accepts(value: object) -> bool:
        if type(value) is not dict:
            return False
        for name, item in value.items():
            exact = exact_types.get(name)
            if exact is not None:
                if type(item) is not exact:
                    return False
                continue
            check = checks.get(name)  # proto field names only: a json_name goes the slow way
            if check is None or not check(item):
                return False
        return True

    return accepts
