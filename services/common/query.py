"""Query models: the base every query model derives from, parsing a request's query into one
(a 400 problem+json whose ``errors[]`` name each parameter at fault), and the history query
(``at`` / ``from`` / ``to`` / ``context``) the gateway and the history service both apply.

Unknown parameters are rejected and a parameter given twice is an error, so a query means
one thing wherever it is read. The models also feed the gateway's OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self

from multidict import MultiMapping
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.errors import AmpgateError, ValidationProblem
from services.common.ids import CONTEXT_RE, DIGEST_RE
from services.common.timestamps import RFC3339_HINT, parse_rfc3339


class Query(BaseModel):
    """Base for query models: unknown parameters are errors; names are the wire names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ParamError(AmpgateError, ValueError):
    """Raised inside model validators to name the parameter at fault."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


def parse_query(model: type[Query], query: MultiMapping[str]) -> Query:
    errors: list[dict[str, str]] = []
    data: dict[str, str] = {}
    for name, value in query.items():
        if name in data:
            errors.append({"parameter": name, "message": "given more than once"})
        data[name] = value
    if errors:
        raise ValidationProblem(errors)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationProblem(_pydantic_errors(exc, model)) from None


def _pydantic_errors(exc: ValidationError, model: type[BaseModel]) -> list[dict[str, str]]:
    aliases = {n: (f.alias or n) for n, f in model.model_fields.items()}
    out = []
    for err in exc.errors(include_url=False):
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ParamError):
            out.append({"parameter": ctx_error.parameter, "message": ctx_error.message})
            continue
        loc = err["loc"]
        name = aliases.get(str(loc[0]), str(loc[0])) if loc else "query"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown parameter"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append({"parameter": name, "message": msg})
    return out


# -- the history query (DESIGN.md §11) -------------------------------------------------------


def _instant(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_rfc3339(value)
        except ValueError:
            raise ValueError(RFC3339_HINT) from None
    return value


class HistoryQuery(Query):
    at: Annotated[str | None, AfterValidator(_instant)] = Field(
        None, description="RFC 3339 instant: answer the version in force then",
        json_schema_extra={"format": "date-time"})
    from_: Annotated[str | None, Field(alias="from", pattern=DIGEST_RE.pattern)] = Field(
        None, description="digest of the older version of a diff")
    to: Annotated[str | None, Field(pattern=DIGEST_RE.pattern)] = Field(
        None, description="digest of the newer version of a diff")

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        if (self.from_ is None) != (self.to is None):
            raise ParamError("from" if self.from_ is None else "to", "give both from and to")
        if self.at is not None and self.from_ is not None:
            raise ParamError("at", "give either at or from/to")
        return self

    @property
    def instant(self) -> datetime | None:
        """``at`` as an aware UTC datetime."""
        return parse_rfc3339(self.at) if self.at is not None else None

    def params(self) -> dict[str, str]:
        """The query as it goes on the wire (the gateway forwards it so)."""
        return {k: v for k, v in self.model_dump(by_alias=True).items() if v is not None}


class PriceHistoryQuery(HistoryQuery):
    context: Annotated[str, Field(pattern=CONTEXT_RE.pattern)] = Field(
        description="tariff context name (AMPGATE_TARIFF_CONTEXTS)", examples=["demo"])
