"""The sandbox's mutable world: passports, users, stations, EVSEs and their tariffs."""

from __future__ import annotations

import bisect
import copy
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from services.sandbox import seed
from services.sandbox.tariffs import canonical_evse_id

_CURSOR_NS = uuid.UUID("6f1f6f0e-6c1b-4a53-9d55-2f8a0d0c9b41")


@dataclass
class Evse:
    evse_id: str  # as the vendor spells it (separator kept)
    tariff: dict[str, Any]  # shared between EVSEs until one is changed


@dataclass
class SandboxData:
    passports: dict[str, dict[str, Any]] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    stations: list[dict[str, Any]] = field(default_factory=list)
    evses: dict[str, Evse] = field(default_factory=dict)  # canonical id -> EVSE
    _next_passport: int = 1
    _next_user: int = 2
    _sorted: list[str] | None = None
    _cursors: dict[str, str] = field(default_factory=dict)  # cursor -> canonical id

    @classmethod
    def seeded(cls, seed_value: int, *, stations: int, evses: int, passports: int) -> SandboxData:
        rng = random.Random(seed_value)
        data = cls()
        for n in range(1, passports + 1):
            pid = seed.passport_id(n)
            data.passports[pid] = seed.passport(rng, pid)
        data._next_passport = passports + 1
        data.user = seed.user()
        data.users = {data.user["id"]: data.user}
        data.stations = seed.stations(rng, stations)
        shared = seed.tariffs()
        for evse_id, tariff in seed.evses(rng, evses):
            data.evses[canonical_evse_id(evse_id)] = Evse(evse_id, shared[tariff])  # type: ignore[index]
        return data

    def load(self, other: SandboxData) -> None:
        """Take over another world's content (re-seeding a running sandbox)."""
        self.__dict__.update(other.__dict__)

    # passports

    def new_passport_id(self) -> str:
        while (pid := seed.passport_id(self._next_passport)) in self.passports:
            self._next_passport += 1
        self._next_passport += 1
        return pid

    def put_passport(self, pid: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a document under ``pid``; its top-level ``id`` is the passport id (the
        owned list identifies items by it), so public and owned views agree."""
        stored = {"id": pid, **{k: v for k, v in doc.items() if k != "id"}}
        self.passports[pid] = stored
        return stored

    # users

    def new_user_id(self) -> str:
        while (uid := f"usr-{self._next_user:04d}") in self.users:
            self._next_user += 1
        self._next_user += 1
        return uid

    # EVSEs and tariffs

    def evse(self, raw_id: str) -> Evse | None:
        key = canonical_evse_id(raw_id)
        return self.evses.get(key) if key else None

    def put_tariff(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge tariff-defining fields into this EVSE's tariff only (copy on write)."""
        evse = self.evses[key]
        evse.tariff = {**copy.deepcopy(evse.tariff), **copy.deepcopy(fields)}
        return evse.tariff

    def add_evse(self, evse_id: str, tariff: dict[str, Any]) -> Evse:
        key = canonical_evse_id(evse_id)
        assert key is not None
        self.evses[key] = evse = Evse(evse_id, tariff)
        self._sorted = None
        return evse

    def remove_evse(self, key: str) -> bool:
        if self.evses.pop(key, None) is None:
            return False
        self._sorted = None
        return True

    def default_tariff(self) -> dict[str, Any]:
        return seed.tariffs()["ac-standard"]

    def _order(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.evses)
        return self._sorted

    def cursor_start(self, cursor: str) -> int | None:
        """Index where a page starts: ``start``, or a cursor handed out earlier (still
        valid when its EVSE has been removed since: paging goes by order)."""
        if cursor == "start":
            return 0
        key = self._cursors.get(cursor)
        if key is None:
            return None
        return bisect.bisect_left(self._order(), key)

    def page(self, start: int, limit: int) -> tuple[list[Evse], str | None]:
        """EVSEs of one all_paged page and the cursor of the next (None on the last)."""
        order = self._order()
        keys = order[start:start + limit]
        following = start + limit
        if following >= len(order):
            return [self.evses[k] for k in keys], None
        next_key = order[following]
        cursor = str(uuid.uuid5(_CURSOR_NS, next_key))
        self._cursors[cursor] = next_key
        return [self.evses[k] for k in keys], cursor
