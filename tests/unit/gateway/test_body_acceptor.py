"""The write bodies' fields-only acceptor (validation.body_acceptor) says yes exactly when
the body model does; what it rejects goes to the model, which decides."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from services.gateway.validation import NewUser, Passport, User, body_acceptor
from services.sandbox import seed

ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1.5, 1e300, "", "x", "BP-0001", "../etc",
                         [], [1], ["a"], [{}], {}, {"a": 1}, {"name": 3}]


def _model_says(model: type[BaseModel], doc: Any) -> bool:
    try:
        model.model_validate(doc, strict=True)
    except ValidationError:
        return False
    return True


def _acceptor_says(model: type[BaseModel], doc: Any) -> bool:
    acceptor = body_acceptor(model)
    assert acceptor is not None
    try:
        acceptor.validate_python(doc, strict=True)
    except ValidationError:
        return False
    return True


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replaced(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


def _variants(doc: dict) -> list[Any]:
    out: list[Any] = [doc, {}, {"unknown": {"deep": [1, 2]}}]
    for path in _paths(doc):
        out += [_replaced(doc, path, v) for v in ODD_VALUES]
    return out


def test_passport_acceptor_agrees_with_the_model_on_every_member_replaced():
    doc = seed.passport(random.Random(3), "BP-0001")
    verdicts = {True: 0, False: 0}
    for variant in _variants(doc):
        said = _model_says(Passport, variant)
        assert _acceptor_says(Passport, variant) is said, variant
        verdicts[said] += 1
    assert verdicts[True] > 100 and verdicts[False] > 100  # both kinds were tried


@pytest.mark.parametrize("model", [User, NewUser])
def test_user_acceptors_agree_with_the_models(model):
    doc = {"email": "a@b.example", "name": "A", "roles": ["reader"], "extra": 1}
    for variant in _variants(doc):
        assert _acceptor_says(model, variant) is _model_says(model, variant), variant


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int | None = None


class _Forbidding(BaseModel):
    model_config = ConfigDict(extra="allow")
    inner: _Inner | None = None


def test_a_nested_models_extra_forbid_holds_in_the_acceptor():
    assert _acceptor_says(_Forbidding, {"inner": {"n": 1}, "other": 2})
    assert not _model_says(_Forbidding, {"inner": {"n": 1, "other": 2}})
    assert not _acceptor_says(_Forbidding, {"inner": {"n": 1, "other": 2}})


class _Checked(BaseModel):
    n: int | None = None

    @field_validator("n")
    @classmethod
    def _small(cls, v: int | None) -> int | None:
        if v is not None and v > 9:
            raise ValueError("too big")
        return v


class _Posted(BaseModel):
    n: int | None = None

    def model_post_init(self, context: Any) -> None:
        if self.n == 7:
            raise ValueError("seven")


class _Whole(BaseModel):
    n: int | None = None

    @model_validator(mode="after")
    def _not_seven(self) -> _Whole:
        if self.n == 7:
            raise ValueError("seven")
        return self


class _Outer(BaseModel):
    checked: _Checked | None = None


@pytest.mark.parametrize("model", [_Checked, _Posted, _Whole, _Outer])
def test_models_whose_instances_take_part_get_no_acceptor(model):
    assert body_acceptor(model) is None


def test_the_passport_acceptor_leaves_few_containers_for_the_gc():
    """Its verdict costs plain dicts, not model instances with their dicts, fields sets and
    extras (~210 tracked containers for this passport; every one counts towards the cyclic
    GC's next pass)."""
    import gc

    doc = seed.passport(random.Random(3), "BP-0001")
    acceptor = body_acceptor(Passport)
    assert acceptor is not None
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        answer = acceptor.validate_python(doc, strict=True)
        made = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert type(answer) is dict and type(answer["general_information"]) is dict
    assert made < 80, made
