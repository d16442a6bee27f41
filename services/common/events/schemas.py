"""The compiled event contracts (proto-schemas/, generated into ``_gen`` by
scripts/gen_protos.sh) and the one check every value passes: proto3 JSON that parses
into the topic's message with no unknown fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

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
