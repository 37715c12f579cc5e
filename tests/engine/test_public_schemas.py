"""The engine on public schemas it was not written for: Pagila and Chinook, with generated data.

Each source is laid out as an operator would have it: the project's schema
file loaded with ``psql``, every table filled (``tests/public_schemas/generate.py``),
the materialized views refreshed. The schema of record is what ``pg_dump
--schema-only -n public`` writes from that source, unedited. After the copy the
test compares with its own eyes (``tests/public_schemas/compare.py``): every
row of every table, partition and materialized view, every sequence's
position, every trigger and its state; then it writes through the target.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from migrations import engine, online
from migrations.connection import Endpoints
from migrations.errors import ForeignRows
from migrations.freeze import unfreeze
from migrations.rehearsal.localserver import LocalServer
from tests.public_schemas import compare, generate
from tests.public_schemas.clients import dump_schema, load_schema_file, refresh_materialized_views
from tests.shapes import Lab, assert_frozen, migration_role
from tests.support import ROOT, create_database, drop_database

SCHEMA = "public"
NewDatabase = Callable[..., str]  # the new_database fixture
SAMPLES = ROOT / "tests" / "public_schemas"


@dataclass(frozen=True)
class Sample:
    """A public schema file and the generator that fills it."""

    name: str
    fill: Callable[[psycopg.Connection], None]

    @property
    def schema_file(self) -> Path:
        return SAMPLES / self.name / "schema.sql"


PAGILA = Sample("pagila", generate.fill_pagila)
CHINOOK = Sample("chinook", generate.fill_chinook)


def _build(server: LocalServer, sample: Sample) -> str:
    """A source database laid out from ``sample`` as an operator would have it; its name."""
    name = create_database(server, f"{sample.name}_template")
    load_schema_file(server.bindir, server.conninfo(name), sample.schema_file)
    with psycopg.connect(server.conninfo(name), autocommit=True) as conn:
        sample.fill(conn)
        refresh_materialized_views(conn, SCHEMA)
    return name


@pytest.fixture(scope="module")
def pagila_template(source_server: LocalServer) -> Iterator[str]:
    name = _build(source_server, PAGILA)
    yield name
    drop_database(source_server, name)


@pytest.fixture(scope="module")
def chinook_template(source_server: LocalServer) -> Iterator[str]:
    name = _build(source_server, CHINOOK)
    yield name
    drop_database(source_server, name)


def _one(conninfo: str, query: str, params: tuple[object, ...] = ()) -> tuple:
    with psycopg.connect(conninfo, options=compare.SESSION) as conn:
        row = conn.execute(query, params).fetchone()
        assert row is not None, query
        return row


def _all(conninfo: str, query: str) -> list[tuple]:
    with psycopg.connect(conninfo, options=compare.SESSION) as conn:
        return conn.execute(query).fetchall()


# ------------------------------------------------------------------- Pagila
HAND_MADE_FULLTEXT = (
    f"SELECT film_id, fulltext::text FROM public.film WHERE film_id = 1 OR film_id % {generate.FULLTEXT_BY_HAND_EVERY} = 0 ORDER BY 1"
)


def test_pagila_is_copied_row_for_row_with_partitions_triggers_and_its_materialized_view(
    source_server: LocalServer, target_server: LocalServer, pagila_template: str, new_database: NewDatabase
) -> None:
    source = new_database(source_server, "pagila", pagila_template)
    target = new_database(target_server, "pagila")
    dump = dump_schema(source_server.bindir, source, SCHEMA)
    expected = compare.read(source, SCHEMA)

    engine.migrate(Endpoints(source, SCHEMA, target, SCHEMA), init_sql=dump, jobs=2)

    assert compare.differences(expected, compare.read(target, SCHEMA, expected.relations)) == []
    # No trigger fired during the load: the tsvectors written by hand, which film_fulltext_trigger
    # (ENABLE ALWAYS) would have recomputed, and every last_update (compared above) are as in the source.
    assert _all(target, HAND_MADE_FULLTEXT) == _all(source, HAND_MADE_FULLTEXT)
    assert _one(target, "SELECT relispopulated FROM pg_class WHERE oid = 'public.rental_by_category'::regclass") == (True,)

    # The service's own writes fire the triggers as before.
    with psycopg.connect(target, options=compare.SESSION) as conn:
        (before,) = conn.execute("SELECT last_update FROM public.actor WHERE actor_id = 1").fetchone()
        (after,) = conn.execute("UPDATE public.actor SET first_name = first_name WHERE actor_id = 1 RETURNING last_update").fetchone()
        assert after != before, "last_updated did not fire on an UPDATE through the target"
        matches = conn.execute(
            "UPDATE public.film SET title = 'Zeppelin Rising' WHERE film_id = %s RETURNING fulltext @@ to_tsquery('english', 'zeppelin')",
            (generate.FULLTEXT_BY_HAND_EVERY,),
        ).fetchone()
        assert matches == (True,), "film_fulltext_trigger did not fire on an UPDATE through the target"
        (store_before,) = conn.execute("SELECT last_update FROM public.store WHERE store_id = 1").fetchone()
        (store_after,) = conn.execute("UPDATE public.store SET address_id = address_id WHERE store_id = 1 RETURNING last_update").fetchone()
        assert store_after == store_before, "the trigger disabled in the source fired in the target"
        (new_actor,) = conn.execute("INSERT INTO public.actor (first_name, last_name) VALUES ('New', 'Hire') RETURNING actor_id").fetchone()
        assert new_actor > expected.highest_drawn["actor_actor_id_seq"]
        (new_payment,) = conn.execute(
            "INSERT INTO public.payment (customer_id, staff_id, rental_id, amount, payment_date)"
            " VALUES (1, 1, 1, 1.00, '2022-03-15 12:00+00') RETURNING payment_id"
        ).fetchone()
        assert new_payment > expected.highest_drawn["payment_payment_id_seq"]


def test_pagila_is_copied_by_a_migration_role_that_is_no_superuser(
    source_server: LocalServer, target_server: LocalServer, pagila_template: str
) -> None:
    """As on Cloud SQL: the role reads the shared instance and freezes it (SELECT, TRIGGER, CREATE on the
    database), nothing more; no LOCK TABLE, no ownership of the service's tables."""
    lab = Lab(source_server, target_server)
    try:
        source = lab.database(source_server, "pagila_role", pagila_template)
        target = lab.target()
        dump = dump_schema(source_server.bindir, source, SCHEMA)
        expected = compare.read(source, SCHEMA)

        engine.migrate(Endpoints(migration_role(lab, source, SCHEMA), SCHEMA, target, SCHEMA), init_sql=dump, jobs=2)

        assert compare.differences(expected, compare.read(target, SCHEMA, expected.relations)) == []
        assert_frozen(source, SCHEMA)
    finally:
        lab.close()


# ------------------------------------------------------------------ Chinook
# Every relation, type and routine of the schema with its owner, as the catalog says.
OWNERS = """
SELECT DISTINCT pg_get_userbyid(owner) FROM (
  SELECT relowner AS owner FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'S')
  UNION ALL SELECT typowner FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e', 'd')
  UNION ALL SELECT proowner FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT nspowner FROM pg_namespace WHERE nspname = 'public') o
"""


def test_pagila_refuses_rows_it_did_not_write_then_hands_everything_over_to_the_service_user(
    source_server: LocalServer, target_server: LocalServer, pagila_template: str, tmp_path: Path
) -> None:
    """The target's preparation and the hand-over in the freeze window, on a schema this project did not write,
    by a migration role that is no superuser."""
    lab = Lab(source_server, target_server)
    try:
        source = lab.database(source_server, "pagila_handover", pagila_template)
        target = lab.target()
        service = lab.role(target_server, "pagila_service")
        dump = tmp_path / "pagila.sql"
        dump.write_text(dump_schema(source_server.bindir, source, SCHEMA), encoding="utf-8")
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public")  # the dump creates it
        load_schema_file(target_server.bindir, target, dump)  # laid out by hand, as an operator may
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("INSERT INTO public.language (name) VALUES ('Esperanto')")
            conn.execute("INSERT INTO public.country (country) VALUES ('Atlantis')")
        endpoints = Endpoints(migration_role(lab, source, SCHEMA), SCHEMA, target, SCHEMA)

        with pytest.raises(ForeignRows, match="^target tables public.country, public.language on .* hold rows"):
            engine.migrate(endpoints, service_user=service, jobs=2)
        assert _one(target, "SELECT count(*) FROM public.language WHERE name = 'Esperanto'") == (1,)
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("TRUNCATE public.language, public.country CASCADE")

        expected = compare.read(source, SCHEMA)
        engine.migrate(endpoints, service_user=service, jobs=2)

        assert compare.differences(expected, compare.read(target, SCHEMA, expected.relations)) == []
        assert _all(target, OWNERS) == [(service,)]
        as_service = psycopg.conninfo.make_conninfo(target, user=service)
        assert _one(as_service, "SELECT count(*) FROM public.rental") == _one(source, "SELECT count(*) FROM public.rental")
    finally:
        lab.close()


def test_chinook_is_copied_row_for_row_through_the_command_line(
    source_server: LocalServer, target_server: LocalServer, chinook_template: str, new_database: NewDatabase, tmp_path: Path
) -> None:
    source = new_database(source_server, "chinook", chinook_template)
    target = new_database(target_server, "chinook")
    init = tmp_path / "chinook_schema.sql"
    init.write_text(dump_schema(source_server.bindir, source, SCHEMA), encoding="utf-8")
    expected = compare.read(source, SCHEMA)

    copied = subprocess.run(
        [sys.executable, "-m", "migrations", "copy", "--source", source, "--source-schema", SCHEMA,
         "--target", target, "--init", str(init), "--jobs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )

    assert copied.returncode == 0, copied.stderr
    assert compare.differences(expected, compare.read(target, SCHEMA, expected.relations)) == []
    # The identities (GENERATED ALWAYS) go on past every copied key.
    with psycopg.connect(target) as conn:
        (artist,) = conn.execute("INSERT INTO public.artist (name) VALUES ('After the move') RETURNING artist_id").fetchone()
        assert artist > expected.highest_drawn["artist_artist_id_seq"]
        (line,) = conn.execute(
            "INSERT INTO public.invoice_line (invoice_id, track_id, unit_price, quantity) VALUES (1, 1, 0.99, 1) RETURNING invoice_line_id"
        ).fetchone()
        assert line > expected.highest_drawn["invoice_line_invoice_line_id_seq"]


# --------------------------------------------------- the comparison itself
BREAKAGES = {  # sample -> (statements that change a clone, words the differences must name)
    "pagila": (
        (
            "UPDATE public.payment_p2022_03 SET amount = amount + 1 WHERE payment_id = (SELECT min(payment_id) FROM public.payment_p2022_03)",
            "REFRESH MATERIALIZED VIEW public.rental_by_category WITH NO DATA",
            "ALTER TABLE public.actor DISABLE TRIGGER last_updated",
            "SELECT setval('public.actor_actor_id_seq', 5)",
            "UPDATE public.film SET rental_rate = rental_rate WHERE film_id = 7",  # last_updated fires
        ),
        ("table payment_p2022_03", "materialized view rental_by_category: not populated", "trigger last_updated on actor",
         "sequence actor_actor_id_seq", "table film"),
    ),
    "chinook": (
        (
            "UPDATE public.employee SET hire_date = '-infinity' WHERE employee_id = 11",
            "DELETE FROM public.playlist_track WHERE playlist_id = 1",
            "SELECT setval(pg_get_serial_sequence('public.artist', 'artist_id'), 2)",
            "CREATE TRIGGER extra BEFORE UPDATE ON public.genre FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        ),
        ("table employee", "table playlist_track", "sequence artist_artist_id_seq", "trigger extra on genre: only in the target"),
    ),
}


@pytest.mark.parametrize("sample", [PAGILA, CHINOOK], ids=lambda s: s.name)
def test_the_comparison_holds_for_a_clone_and_names_what_a_change_breaks(
    sample: Sample, source_server: LocalServer, new_database: NewDatabase, request: pytest.FixtureRequest
) -> None:
    """The loader and the comparison are sound: a template clone is identical, and each kind of change is named."""
    template = request.getfixturevalue(f"{sample.name}_template")
    clone = new_database(source_server, sample.name, template)
    expected = compare.read(source_server.conninfo(template), SCHEMA)
    assert sum(len(rows or ()) for rows in expected.rows.values()) > 5000
    assert all(rows for rows in expected.rows.values()), "every table and materialized view holds rows"

    assert compare.differences(expected, compare.read(clone, SCHEMA, expected.relations)) == []

    statements, named = BREAKAGES[sample.name]
    with psycopg.connect(clone, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    found = compare.differences(expected, compare.read(clone, SCHEMA, expected.relations))
    for words in named:
        assert any(line.startswith(words) for line in found), (words, found)


def test_chinook_is_cut_over_online_row_for_row_with_the_writes_made_while_it_streamed(
    source_server: LocalServer, target_server: LocalServer, chinook_template: str, new_database: NewDatabase
) -> None:
    """``sync`` then ``cutover``: the rows written while the copy streamed are there, and the window's counts
    found the target's pages marked all-visible (the VACUUM before the freeze)."""
    source = new_database(source_server, "chinook_online", chinook_template)
    target = new_database(target_server, "chinook_online")
    endpoints = Endpoints(source, SCHEMA, target, SCHEMA)
    online.sync(endpoints, init_sql=dump_schema(source_server.bindir, source, SCHEMA))
    online.wait_until_streaming(endpoints, 120)
    with psycopg.connect(source) as conn:
        conn.execute("INSERT INTO public.artist (name) VALUES ('Streamed while syncing')")
        conn.execute("UPDATE public.track SET unit_price = unit_price + 1 WHERE track_id <= 50")
        conn.execute("DELETE FROM public.playlist_track WHERE playlist_id = 1")

    online.cutover(endpoints)
    online.finalize(endpoints)
    with psycopg.connect(source) as conn:
        unfreeze(conn, SCHEMA)  # its trigger aside, the shared instance holds what it held at the freeze

    expected = compare.read(source, SCHEMA)
    assert compare.differences(expected, compare.read(target, SCHEMA, expected.relations)) == []
    assert _one(target, "SELECT relallvisible > 0 FROM pg_class WHERE oid = 'public.playlist_track'::regclass") == (True,)
