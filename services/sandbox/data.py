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
    """One EVSE and what it charges: a variant of its tariff per tariff group (shared
    between EVSEs until one is changed), and tariffs changed for single media."""

    evse_id: str  # as the vendor spells it (separator kept)
    groups: dict[str, dict[str, Any]]  # tariff group -> tariff
    media: dict[seed.Medium, dict[str, Any]] = field(default_factory=dict)

    @property
    def tariff(self) -> dict[str, Any]:
        """The standard group's tariff (what the docs' sample media see)."""
        return self.groups[seed.STANDARD]

    def tariff_for(self, medium: seed.Medium) -> dict[str, Any]:
        """The tariff this medium is charged here."""
        found = self.media.get(medium)
        return found if found is not None else self.groups[seed.tariff_group(medium)]


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
        shared = {name: seed.variants(t) for name, t in seed.tariffs().items()}
        for evse_id, tariff in seed.evses(rng, evses):
            data.evses[canonical_evse_id(evse_id)] = Evse(  # type: ignore[index]
                evse_id, dict(shared[tariff]))
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
        """Store a document under ``pid``; its top-level ``id`` is the passport id: owned
        views carry it, the public view leaves it out (the vendor's sample has none)."""
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

    def put_tariff(self, key: str, fields: dict[str, Any],
                   medium: seed.Medium | None = None) -> dict[str, Any]:
        """Merge tariff-defining fields into this EVSE's tariffs only (copy on write):
        for one medium, or (``medium`` None) for every medium: each group's variant and
        each single medium's tariff. Returns the medium's (else the standard) tariff."""
        evse = self.evses[key]
        if medium is not None:
            evse.media[medium] = _merged(evse.tariff_for(medium), fields)
            return evse.media[medium]
        evse.groups = {g: _merged(t, fields) for g, t in evse.groups.items()}
        evse.media = {m: _merged(t, fields) for m, t in evse.media.items()}
        return evse.tariff

    def add_evse(self, evse_id: str, tariff: dict[str, Any]) -> Evse:
        key = canonical_evse_id(evse_id)
        assert key is not None
        self.evses[key] = evse = Evse(evse_id, seed.variants(tariff))
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


def _merged(tariff: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {**copy.deepcopy(tariff), **copy.deepcopy(fields)}
