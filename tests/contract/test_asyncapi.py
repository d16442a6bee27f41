"""proto-schemas/asyncapi.yaml: valid AsyncAPI 3.0.0 (the official JSON Schema from
@asyncapi/specs) and in step with the protos and the envelope the code emits."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml
from google.protobuf import json_format

from services.common.events import (
    DLQ_REASON,
    DLQ_SERVICE,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    HISTORY_DEAD_LETTER_TOPIC,
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    WEBHOOKS_DEAD_LETTER_TOPIC,
    build_event,
)
from services.common.events.schemas import (
    ChangeKind,
    Detection,
    PassportChanged,
    PriceChanged,
    Tariff,
)
from tests.conftest import server_unavailable
from tests.unit.common.event_samples import passport_data, price_data

ROOT = Path(__file__).resolve().parents[2]
DOC = yaml.safe_load((ROOT / "proto-schemas" / "asyncapi.yaml").read_text())
SPEC = ROOT / ".tools" / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
SCHEMAS = DOC["components"]["schemas"]


def node_path(ref: str) -> list[str]:
    assert ref.startswith("#/"), ref
    return [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]


def deref(ref: str):
    node = DOC
    for part in node_path(ref):
        node = node[part]
    return node


def validator_for(schema_name: str) -> jsonschema.Draft7Validator:
    """A validator for one components schema; its #/components/... refs resolve because
    the components travel along at the root."""
    schema = {**DOC["components"]["schemas"][schema_name], "components": DOC["components"]}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def test_document_is_valid_asyncapi_3():
    if not SPEC.exists():
        server_unavailable("AsyncAPI 3.0.0 JSON Schema",
                           "run scripts/bootstrap.sh (installs @asyncapi/specs into .tools/)")
    spec = orjson.loads(SPEC.read_bytes())
    assert DOC["asyncapi"] == "3.0.0"
    errors = sorted(jsonschema.Draft7Validator(spec).iter_errors(DOC), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_topics_keys_and_dead_letter_topics_are_described():
    channels = {c["address"]: c for c in DOC["channels"].values()}
    assert set(channels) == {PASSPORT_TOPIC, PRICE_TOPIC, HISTORY_DEAD_LETTER_TOPIC,
                             WEBHOOKS_DEAD_LETTER_TOPIC}
    for topic in (PASSPORT_TOPIC, PRICE_TOPIC):
        (message,) = channels[topic]["messages"].values()
        message = deref(message["$ref"])
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert message["contentType"] == "application/json"
    dead_letter = SCHEMAS["DeadLetterHeaders"]
    assert set(dead_letter["required"]) == {DLQ_REASON, DLQ_SOURCE_TOPIC, DLQ_SOURCE_PARTITION,
                                            DLQ_SOURCE_OFFSET, DLQ_SERVICE}


def proto_fields(message) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}


@pytest.mark.parametrize(("schema", "message"), [
    ("PassportChanged", PassportChanged), ("PriceChanged", PriceChanged), ("Tariff", Tariff)])
def test_payload_schemas_name_exactly_the_proto_fields(schema, message):
    assert set(SCHEMAS[schema]["properties"]) == proto_fields(message)
    assert SCHEMAS[schema]["additionalProperties"] is False


def test_enums_match_the_protos():
    assert SCHEMAS["ChangeKind"]["enum"] == [k for k in ChangeKind.keys() if not k.endswith("UNSPECIFIED")]  # noqa: SIM118
    assert SCHEMAS["Detection"]["enum"] == [k for k in Detection.keys() if not k.endswith("UNSPECIFIED")]  # noqa: SIM118


@pytest.mark.parametrize(("topic", "ce_type", "subject", "data", "schema"), [
    (PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data(), "PassportChanged"),
    (PRICE_TOPIC, PRICE_CE_TYPE, "DE*EEE*E000001", price_data(), "PriceChanged"),
])
def test_what_the_code_emits_fits_the_documented_headers_and_payload(topic, ce_type, subject, data,
                                                                      schema):
    record = build_event(topic, ce_type, subject, data)
    headers = {k: v.decode() for k, v in record.headers}
    header_schema = "CloudEventHeadersPassport" if topic == PASSPORT_TOPIC else "CloudEventHeadersPrice"
    validator_for(header_schema).validate(headers)
    validator_for(schema).validate(orjson.loads(record.value))


def test_examples_are_valid_events():
    for name, message_type in (("PassportChanged", PassportChanged), ("PriceChanged", PriceChanged)):
        message = DOC["components"]["messages"][name]
        header_schema = message["headers"]["$ref"].rsplit("/", 1)[1]
        for example in message["examples"]:
            validator_for(name).validate(example["payload"])
            validator_for(header_schema).validate(example["headers"])
            json_format.ParseDict(example["payload"], message_type(), ignore_unknown_fields=False)


def test_examples_show_events_as_emitted_without_nulls():
    """proto3 JSON omits unset fields: an example with `null` shows what no event carries
    (it once showed `stepCosts: null`)."""
    def nulls(node, path="") -> list[str]:
        if node is None:
            return [path]
        if isinstance(node, dict):
            return [p for k, v in node.items() for p in nulls(v, f"{path}/{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in nulls(v, f"{path}/{i}")]
        return []

    examples = [ex for message in DOC["components"]["messages"].values()
                for ex in message.get("examples", [])]
    assert examples
    for ex in examples:
        assert not nulls(ex.get("payload")), nulls(ex.get("payload"))
