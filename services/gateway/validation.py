"""Input validation of the vendor routes: their query models and bodies, checked before
any upstream call.

Query parameters are pydantic models on ``services.common.query.Query`` (unknown
parameters are rejected; ``parse_query`` turns errors into problem+json ``errors[]``
entries naming the parameter); bodies are checked here too (errors name a JSON pointer).
The identifier patterns and path-id checks are ``services.common.ids``; the history query
is ``services.common.query.HistoryQuery``. The models also feed the OpenAPI document, so
the contract has one source.
"""

from __future__ import annotations

from typing import Annotated, Any, Self
from uuid import UUID

import orjson
from aiohttp import web
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import SchemaValidator

from services.common.errors import ValidationProblem
from services.common.ids import (
    EMAID_PATTERN,
    EMAID_RE,
    EVSE_PATTERN,
    EVSE_RE,
    PASSPORT_ID_PATTERN,
    PASSPORT_ID_RE,
    TAG_ID_RE,
)
from services.common.query import ParamError, Query
from services.gateway.schemas import PassportDocument

PASSPORT_ID_SCHEMA = {"type": "string", "maxLength": 128, "pattern": PASSPORT_ID_PATTERN}
EVSE_ID_SCHEMA = {"type": "string", "maxLength": 40, "pattern": EVSE_PATTERN}
_EVSE_ITEM = EVSE_PATTERN[1:-1]


def _evse(value: str) -> str:
    if not EVSE_RE.match(value):
        raise ValueError("not an eMI3 EVSE id (e.g. DE*EEE*E000001 or BE-BEC-E041503001)")
    return value.upper()


def _emaid(value: str) -> str:
    if not EMAID_RE.match(value):
        raise ValueError("not an ISO 15118 EMAID")
    return value.upper()


def _tag_id(value: str) -> str:
    if not TAG_ID_RE.match(value):
        raise ValueError("must be 1-64 letters, digits, '_', ':' or '-'")
    return value


def _uuid(value: str) -> str:
    try:
        return str(UUID(value))
    except ValueError:
        raise ValueError("not a UUID") from None


def _flag(value: Any) -> bool:
    # The pricing docs use a bare `&include_tax`: present and empty means true.
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("", "true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise ValueError("must be true or false")


def _comma_separated(schema: dict[str, Any]) -> None:
    """On the wire the list is one string: document it as one."""
    schema.pop("items", None)
    schema.update(type="string", pattern=f"^{_EVSE_ITEM}(,{_EVSE_ITEM}){{0,99}}$")


def _evse_list(value: str) -> list[str]:
    items = [v.strip() for v in str(value).split(",")]
    if not items or any(not v for v in items):
        raise ValueError("a comma-separated list of EVSE ids, without empty items")
    if len(items) > 100:
        raise ValueError("at most 100 EVSE ids")
    out = []
    for v in items:
        try:
            out.append(_evse(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an eMI3 EVSE id") from None
    return out


EvseId = Annotated[str, Field(max_length=40, json_schema_extra={"pattern": EVSE_PATTERN}),
                   AfterValidator(_evse)]
Emaid = Annotated[str, Field(max_length=20, json_schema_extra={"pattern": EMAID_PATTERN}),
                  AfterValidator(_emaid)]
TagId = Annotated[str, Field(json_schema_extra={"pattern": TAG_ID_RE.pattern}),
                  AfterValidator(_tag_id)]
AuthUuid = Annotated[str, Field(json_schema_extra={"format": "uuid"}), AfterValidator(_uuid)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")]
NonNegInt = Annotated[int, Field(ge=0, le=10**9)]


class AuthMedium(Query):
    tag_id: TagId | None = Field(None, description="RFID tag id of the card or token",
                                 examples=["SOMETHING"])
    emaid: Emaid | None = Field(None, description="ISO 15118 EMAID")
    authenticationUuid: AuthUuid | None = Field(None, description="authentication medium UUID")
    # Accepted, documented as deprecated (not pydantic's deprecated=, which warns on access).
    authendicationUuid: AuthUuid | None = Field(
        None, description="deprecated: the upstream's misspelling of authenticationUuid, "
        "still accepted", json_schema_extra={"deprecated": True})

    @model_validator(mode="after")
    def _one_medium(self) -> Self:
        if self.authenticationUuid and self.authendicationUuid:
            raise ParamError("authenticationUuid", "give authenticationUuid once, in one spelling")
        given = [n for n in ("tag_id", "emaid", "authenticationUuid", "authendicationUuid")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ParamError("tag_id", "give exactly one of tag_id, emaid, authenticationUuid"
                              f" (got {len(given)})")
        return self

    def medium_params(self) -> dict[str, str]:
        """The one medium, in the upstream spelling."""
        if self.tag_id is not None:
            return {"tag_id": self.tag_id}
        if self.emaid is not None:
            return {"emaid": self.emaid}
        return {"authendicationUuid": self.authenticationUuid or self.authendicationUuid or ""}


class _Costing(AuthMedium):
    consumption: NonNegInt | None = Field(None, description="fictional consumption in Wh")
    duration: NonNegInt | None = Field(None, description="total duration in seconds")
    duration_in_minutes: NonNegInt | None = Field(None, description="total duration in minutes")
    currency: Currency | None = None

    @model_validator(mode="after")
    def _one_duration(self) -> Self:
        if self.duration is not None and self.duration_in_minutes is not None:
            raise ParamError("duration_in_minutes", "give duration or duration_in_minutes, not both")
        return self

    def costing_params(self) -> dict[str, str]:
        out = self.medium_params()
        for name in ("consumption", "duration", "duration_in_minutes", "currency"):
            if (v := getattr(self, name)) is not None:
                out[name] = str(v)
        return out


class PriceQuery(_Costing):
    evseId: EvseId = Field(description="eMI3 EVSE id, e.g. DE*EEE*E000001",
                           examples=["DE*EEE*E000001"])
    include_tax: Flag = Field(False, description="add the tax to the price structure")

    def upstream_params(self) -> dict[str, str]:
        out = {"evseId": self.evseId, **self.costing_params()}
        if self.include_tax:
            out["include_tax"] = "true"
        return out


class PriceBatchQuery(_Costing):
    evseIds: Annotated[list[str], BeforeValidator(_evse_list)] = Field(
        description="comma-separated eMI3 EVSE ids (at most 100)",
        examples=["CH*AAA*E00001,AT*AAA*E00001"], json_schema_extra=_comma_separated)

    def upstream_params(self) -> dict[str, str]:
        return {"evseIds": ",".join(self.evseIds), **self.costing_params()}


class PriceAllQuery(AuthMedium):
    cursor: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")] = Field(
        "start", description="`start`, then the previous page's pagination.nextCursorId")
    limit: Annotated[int, Field(ge=1, le=500)] = Field(100, description="page size (1-500)")

    def upstream_params(self) -> dict[str, str]:
        return {"cursor": self.cursor, "limit": str(self.limit), **self.medium_params()}


class StationsQuery(Query):
    page_limit: Annotated[int, Field(ge=1, le=500)] = Field(
        50, alias="page[limit]", description="page size; the upstream clamps at 500")
    page_offset: Annotated[int, Field(ge=0, le=10**9)] = Field(
        0, alias="page[offset]", description="offset of the first station")


class NoQuery(Query):
    pass


# -- bodies -------------------------------------------------------------------------------


class Passport(PassportDocument):
    """A passport to write: the document the API answers (typed as the vendor docs show it,
    unknown fields pass through), with an id we can put in a path."""

    id: Annotated[str, Field(pattern=PASSPORT_ID_RE.pattern, max_length=128,
                             json_schema_extra={"pattern": PASSPORT_ID_PATTERN})] | None = None


class User(BaseModel):
    model_config = ConfigDict(extra="allow")

    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    roles: list[Annotated[str, Field(max_length=128)]] | None = None


class NewUser(User):
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)]


# A body model's verdict without building its instances. Passport.model_validate leaves
# ~210 garbage-collected containers per 5 KB passport (40 nested instances, their dicts,
# fields sets, extras), thrown away at once, and the gateway's cyclic GC passes, triggered
# by such allocations, were ~23 % of its main thread under the events bench. The acceptor
# is the model's own core schema with every model node replaced by a typed-dict node of the
# same fields (same field checks, same defaults making a field optional, same extra
# behaviour): it accepts exactly the dicts the model accepts and answers plain dicts (~58
# containers). Whatever it rejects goes to model_validate, which decides and words the
# errors as always. Models whose instances could take part in the verdict (validator
# functions, custom __init__, post-init, root models, config beyond extra=, field or
# fields options beyond a whitelist) get no acceptor: model_validate alone, as before.
_ACCEPTOR_NODES = frozenset({
    "definitions", "definition-ref", "model", "model-fields", "model-field", "default",
    "nullable", "str", "float", "int", "bool", "list", "dict", "union", "any", "none",
    "literal"})
_MODEL_CONFIG_KEYS = frozenset({"title", "extra_fields_behavior"})
_FIELDS_KEYS = frozenset({"type", "fields", "model_name", "computed_fields", "ref",
                          "metadata", "extra_behavior"})
_FIELD_KEYS = frozenset({"type", "schema", "validation_alias", "serialization_alias",
                         "serialization_exclude", "frozen", "metadata"})
_acceptors: dict[type[BaseModel], SchemaValidator | None] = {}


class _NoAcceptor(Exception):
    pass


def _fields_only(node: Any) -> Any:
    if isinstance(node, list):
        return [_fields_only(v) for v in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    if isinstance(kind, str) and kind not in _ACCEPTOR_NODES:
        raise _NoAcceptor(kind)
    if kind != "model":
        return {k: _fields_only(v) for k, v in node.items()}
    config = node.get("config") or {}
    inner = node["schema"]
    if node.get("custom_init") or node.get("root_model") or node.get("post_init") \
            or not set(config) <= _MODEL_CONFIG_KEYS or inner.get("type") != "model-fields" \
            or not set(inner) <= _FIELDS_KEYS or inner.get("computed_fields"):
        raise _NoAcceptor("model")
    fields = {}
    for name, field in inner["fields"].items():
        if field.get("type") != "model-field" or not set(field) <= _FIELD_KEYS:
            raise _NoAcceptor("model-field")
        schema = _fields_only(field["schema"])
        fields[name] = {
            "type": "typed-dict-field", "schema": schema,
            # a model field is optional exactly when its schema gives a default
            "required": schema.get("type") != "default",
            **{k: field[k] for k in ("validation_alias",) if k in field}}
    typed: dict[str, Any] = {"type": "typed-dict", "fields": fields}
    extra = inner.get("extra_behavior", config.get("extra_fields_behavior"))
    if extra is not None:
        typed["extra_behavior"] = extra
    if "ref" in node:
        typed["ref"] = node["ref"]
    return typed


def body_acceptor(model: type[BaseModel]) -> SchemaValidator | None:
    """The instance-free validator of ``model`` (None: the model must decide alone)."""
    try:
        return _acceptors[model]
    except KeyError:
        pass
    try:
        acceptor: SchemaValidator | None = SchemaValidator(
            _fields_only(model.__pydantic_core_schema__))
    except _NoAcceptor:
        acceptor = None
    _acceptors[model] = acceptor
    return acceptor


async def read_json_body(request: web.Request, model: type[BaseModel]) -> bytes:
    """Check content type, size and shape; answer the bytes to forward unchanged."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        from services.common.errors import Problem

        raise Problem(415, "Unsupported media type",
                      f"send application/json, not {ctype or 'nothing'}")
    raw = await request.read()  # client_max_size enforces the limit (413)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationProblem([{"pointer": "", "message": f"not valid JSON: {exc}"}]) from None
    if not isinstance(doc, dict):
        raise ValidationProblem([{"pointer": "", "message": "must be a JSON object"}])
    acceptor = body_acceptor(model)
    if acceptor is not None:
        try:
            acceptor.validate_python(doc, strict=True)
            return raw
        except ValidationError:
            pass  # the model decides, and words the errors
    try:
        model.model_validate(doc, strict=True)  # JSON types as the schema says: no false → 0.0
    except ValidationError as exc:
        raise ValidationProblem([
            {"pointer": "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in e["loc"]),
             "message": e["msg"]}
            for e in exc.errors(include_url=False)
        ]) from None
    return raw
