"""The store and the idempotence rule, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from services.common.events import PASSPORT, PRICE
from services.common.settings import ConfigError
from services.history.store import HistoryStore, migrations, open_store
from services.history.versions import EntityKey, version_from_event
from tests.unit.history.helpers import (
    at,
    consumed,
    flip_flop,
    passport_doc,
    passport_record,
    price_record,
    tariff,
)


def versions_of(records):
    return [version_from_event(consumed(r)) for r in records]


async def rows(store: HistoryStore, key: EntityKey):
    return [(v.event_id, v.digest, v.previous_digest, v.observed_at, v.change, v.document)
            for v in await store.versions(key)]


async def test_flip_flop_is_four_versions_newest_first(store: HistoryStore) -> None:
    stream = flip_flop("p1")
    stored = await store.record(versions_of(stream))
    assert len(stored) == 4
    got = await store.versions(EntityKey(PASSPORT, "p1"))
    assert [v.observed_at for v in got] == [at(30), at(20), at(10), at(0)]
    assert [v.change for v in got] == ["CHANGE_KIND_UPDATED"] * 3 + ["CHANGE_KIND_SNAPSHOT"]


async def test_the_same_stream_twice_yields_the_same_rows(store: HistoryStore) -> None:
    stream = flip_flop("p1")
    key = EntityKey(PASSPORT, "p1")
    await store.record(versions_of(stream))
    first = await rows(store, key)
    # Replayed in one batch, and again one event at a time: nothing new.
    assert await store.record(versions_of(stream)) == []
    for v in versions_of(stream):
        assert await store.record([v]) == []
    assert await rows(store, key) == first


async def test_a_transition_from_another_replica_is_recorded_once(store: HistoryStore) -> None:
    a, b = passport_doc("p2", 1.0), passport_doc("p2", 2.0)
    one = [passport_record("p2", a, None, 0), passport_record("p2", b, a, 5)]
    # Replica 2 saw the same A→B a moment later, with its own event id.
    two = [passport_record("p2", b, a, 5.01)]
    assert len(await store.record(versions_of(one))) == 2
    assert await store.record(versions_of(two)) == []
    # Within one batch too.
    c = passport_doc("p2", 3.0)
    dup = [passport_record("p2", c, b, 7), passport_record("p2", c, b, 7.02)]
    assert len(await store.record(versions_of(dup))) == 1
    assert len(await store.versions(EntityKey(PASSPORT, "p2"))) == 3


async def test_one_batch_of_many_entities_applies_the_rule_per_entity(store: HistoryStore) -> None:
    # The latest versions of a batch's entities are read together: each entity's own
    # latest decides, not another entity's.
    docs = {pid: (passport_doc(pid, 1.0), passport_doc(pid, 2.0)) for pid in ("m1", "m2", "m3")}
    first = [passport_record(pid, a, None, 0) for pid, (a, _) in docs.items()]
    first += [passport_record(pid, b, a, 5) for pid, (a, b) in docs.items()]
    assert len(await store.record(versions_of(first))) == 6
    # Another replica's m1 and m3 A→B (skipped), a new m2 B→A (recorded), in one batch.
    (a1, b1), (a2, b2), (a3, b3) = docs.values()
    mixed = [passport_record("m1", b1, a1, 5.01), passport_record("m2", a2, b2, 6),
             passport_record("m3", b3, a3, 5.02)]
    stored = await store.record(versions_of(mixed))
    assert [v.key.entity_id for v in stored] == ["m2"]
    assert [len(await store.versions(EntityKey(PASSPORT, pid))) for pid in docs] == [2, 3, 2]


async def test_version_at_and_by_digest(store: HistoryStore) -> None:
    a, b = passport_doc("p3", 1.0), passport_doc("p3", 2.0)
    stream = [passport_record("p3", a, None, 0), passport_record("p3", b, a, 10),
              passport_record("p3", None, b, 20)]
    await store.record(versions_of(stream))
    key = EntityKey(PASSPORT, "p3")
    assert await store.version_at(key, at(-1)) is None
    assert (await store.version_at(key, at(0))).document is not None
    assert (await store.version_at(key, at(9.99))).observed_at == at(0)
    v = await store.version_at(key, at(15))
    assert v.observed_at == at(10) and '"rated_capacity_kwh":2.0' in v.document
    assert (await store.version_at(key, at(25))).deleted
    found = await store.version_by_digest(key, versions_of([stream[0]])[0].digest)
    assert found is not None and found.observed_at == at(0)


async def test_prices_are_kept_per_tariff_context(store: HistoryStore) -> None:
    evse = "DE*EEE*E000001"
    stream = [price_record(evse, "fleet", tariff(0.30), None, 0),
              price_record(evse, "roaming", tariff(0.55), None, 0),
              price_record(evse, "fleet", tariff(0.35), tariff(0.30), 5)]
    await store.record(versions_of(stream))
    assert len(await store.versions(EntityKey(PRICE, evse, "fleet"))) == 2
    assert len(await store.versions(EntityKey(PRICE, evse, "roaming"))) == 1


async def test_migrations_are_recorded_and_applied_once(database_url: str) -> None:
    for _ in range(2):
        s = open_store(database_url)
        await s.open()
        assert await s.applied_migrations() == [1]
        await s.close()


# Two migrations after the packaged ones: 0002 creates a table and alters the real one, 0003
# needs 0002 (order matters) and fails if run twice (a second INSERT of the same key).
EXTRA_MIGRATIONS = {
    "0002_labels.sql": "CREATE TABLE history_labels (name TEXT PRIMARY KEY, note TEXT NOT NULL);\n"
                       "ALTER TABLE history_versions ADD COLUMN label TEXT;\n",
    "0003_first_label.sql": "INSERT INTO history_labels (name, note) VALUES ('first', '0003');\n",
}


def migration_dir(tmp_path: Path, dialect: str, names: list[str]) -> Path:
    folder = tmp_path / f"migrations-{dialect}-{len(names)}"
    folder.mkdir()
    for name in reversed(names):  # written newest first: the order comes from the names
        (folder / name).write_text(EXTRA_MIGRATIONS[name])
    for version, name, sql in migrations(dialect):
        (folder / f"{version:04d}_{name}.sql").write_text(sql)
    return folder


async def labels(database_url: str) -> list[tuple[str, str]]:
    if database_url.startswith("postgresql://"):
        conn = await asyncpg.connect(database_url)
        try:
            return [tuple(r) for r in await conn.fetch("SELECT name, note FROM history_labels")]
        finally:
            await conn.close()
    db = sqlite3.connect(database_url.removeprefix("sqlite://"))
    try:
        return list(db.execute("SELECT name, note FROM history_labels"))
    finally:
        db.close()


async def test_several_migrations_apply_in_order_once_and_upgrade(database_url: str,
                                                                  tmp_path: Path) -> None:
    dialect = "postgres" if database_url.startswith("postgresql://") else "sqlite"
    key = EntityKey(PASSPORT, "p1")
    # A database made by an older release (0001, 0002), then upgraded by a newer one (0003).
    older = migration_dir(tmp_path, dialect, ["0002_labels.sql"])
    s = open_store(database_url, migrations_dir=older)
    await s.open()
    assert await s.applied_migrations() == [1, 2]
    stream = versions_of(flip_flop("p1"))
    await s.record(stream[:1])
    await s.close()
    assert await labels(database_url) == []
    newer = migration_dir(tmp_path, dialect, ["0002_labels.sql", "0003_first_label.sql"])
    for before in (1, 4):  # the second start finds nothing to do
        s = open_store(database_url, migrations_dir=newer)
        await s.open()
        assert await s.applied_migrations() == [1, 2, 3]
        assert len(await s.versions(key)) == before  # the data survived the upgrade
        await s.record(stream)
        assert len(await s.versions(key)) == 4
        await s.close()
        assert await labels(database_url) == [("first", "0003")]


async def test_sqlite_url_with_three_slashes_is_an_absolute_path(tmp_path: Path,
                                                               monkeypatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "data" / "history.sqlite3"
    url = f"sqlite://{target}"  # sqlite:///tmp/.../history.sqlite3, as documented
    assert url.startswith("sqlite:///") and not url.startswith("sqlite:////")
    s = open_store(url)
    await s.open()
    await s.record(versions_of(flip_flop("p1")))
    await s.close()
    assert target.is_file()
    assert not any(elsewhere.rglob("history.sqlite3")), "created relative to the working dir"
    # SQLAlchemy's four-slash spelling names the same file; a host is no path.
    s = open_store(f"sqlite:///{target}")
    await s.open()
    assert len(await s.versions(EntityKey(PASSPORT, "p1"))) == 4
    await s.close()
    for bad in ("sqlite:///", "sqlite://host/history.sqlite3"):
        with pytest.raises(ConfigError, match="AMPGATE_HISTORY__DATABASE_URL"):
            open_store(bad)


async def test_a_large_batch_finds_the_latest_version_of_every_entity(store: HistoryStore) -> None:
    # More entities than one lookup query covers (the SQLite store looks them up in chunks).
    pids = [f"bulk-{n}" for n in range(700)]
    a = {p: passport_doc(p, 1.0) for p in pids}
    b = {p: passport_doc(p, 2.0) for p in pids}
    first = versions_of([passport_record(p, a[p], None, 0) for p in pids])
    assert len(await store.record(first)) == 700
    # A replica's copy of each snapshot (skipped), then A→B→A per passport (recorded), then
    # every first event resent (skipped): all in one batch.
    batch = versions_of([passport_record(p, a[p], None, 0.01) for p in pids]
                        + [passport_record(p, b[p], a[p], 5) for p in pids]
                        + [passport_record(p, a[p], b[p], 10) for p in pids]) + first
    stored = await store.record(batch)
    assert len(stored) == 1400
    assert {v.observed_at for v in stored} == {at(5), at(10)}
    for p in (pids[0], pids[350], pids[-1]):
        got = await store.versions(EntityKey(PASSPORT, p))
        assert [v.observed_at for v in got] == [at(10), at(5), at(0)]
