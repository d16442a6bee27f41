"""The event contracts in proto-schemas/: buf-lint clean, names as DESIGN.md §11 says,
and the generated Python code built from exactly these files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2

from services.common.events._gen.ampgate.events.v1 import (
    change_pb2,
    passport_changed_pb2,
    price_changed_pb2,
)
from tests.conftest import server_unavailable

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "proto-schemas"


def buf_binary() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_lint_is_clean():
    buf = buf_binary()
    if buf is None:
        server_unavailable("buf CLI", "run scripts/bootstrap.sh (installs @bufbuild/buf into .tools/)")
    result = subprocess.run([buf, "lint"], check=False, cwd=PROTOS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (PROTOS / "buf.yaml").read_text().startswith("# buf configuration (v2)")


def test_generated_code_matches_the_proto_files(tmp_path):
    out = tmp_path / "descriptors.pb"
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{wkt}",
         f"--descriptor_set_out={out}", *files],
        check=True, timeout=60,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    compiled = {f.name: _without_json_names(f) for f in fresh.file}
    assert set(compiled) == {"ampgate/events/v1/change.proto",
                             "ampgate/events/v1/passport_changed.proto",
                             "ampgate/events/v1/price_changed.proto"}
    for module in (change_pb2, passport_changed_pb2, price_changed_pb2):
        generated = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert generated == compiled[generated.name], (
            f"{generated.name}: generated code is stale, run scripts/gen_protos.sh")


def _without_json_names(file: descriptor_pb2.FileDescriptorProto):
    """Generated modules embed descriptors without json_name (derived, not declared)."""
    def strip(messages) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)
    strip(file.message_type)
    return file


def fields(message) -> list[str]:
    return [f.name for f in message.DESCRIPTOR.fields]


def test_message_and_enum_names_are_the_contract():
    assert passport_changed_pb2.PassportChanged.DESCRIPTOR.full_name == "ampgate.events.v1.PassportChanged"
    assert price_changed_pb2.PriceChanged.DESCRIPTOR.full_name == "ampgate.events.v1.PriceChanged"
    assert fields(passport_changed_pb2.PassportChanged) == [
        "passport_id", "change", "detected_by", "previous_digest", "digest", "changed_paths",
        "passport", "observed_at"]
    assert fields(price_changed_pb2.PriceChanged) == [
        "evse_id", "tariff_context", "change", "detected_by", "previous_digest", "digest",
        "changed_paths", "previous", "current", "observed_at"]
    assert fields(price_changed_pb2.Tariff)[:5] == [
        "rate_name", "cost_id", "currency", "price_structure", "session_fee"]
    by_name = {f.name: f for f in passport_changed_pb2.PassportChanged.DESCRIPTOR.fields}
    assert by_name["passport"].message_type.full_name == "google.protobuf.Struct"
    assert by_name["observed_at"].message_type.full_name == "google.protobuf.Timestamp"
    assert list(change_pb2.ChangeKind.keys()) == [
        "CHANGE_KIND_UNSPECIFIED", "CHANGE_KIND_SNAPSHOT", "CHANGE_KIND_CREATED",
        "CHANGE_KIND_UPDATED", "CHANGE_KIND_DELETED"]
    assert list(change_pb2.Detection.keys()) == [
        "DETECTION_UNSPECIFIED", "DETECTION_WRITE", "DETECTION_READ", "DETECTION_POLL"]


def test_tariffs_carry_no_request_dependent_amounts_or_personal_data():
    names = set(fields(price_changed_pb2.Tariff)) | set(fields(price_changed_pb2.PriceChanged))
    forbidden = {"cost_total", "cost_time", "cost_power", "step_costs", "cost_total_local_currency",
                 "currency_conversion_rate", "tag_id", "emaid", "authentication_uuid"}
    assert not names & forbidden
