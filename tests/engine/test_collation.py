"""migrations/collation.py on real servers: a target database whose default
collation differs from the source's is refused before the freeze, by plan and
by migrate, naming the text key columns; a schema without text keys, or with
explicit collations on them, moves. The two collations used really do order
those keys differently (the reason for the refusal)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from migrations import engine
from migrations.collation import CollationMismatch, Locale
from migrations.connection import Endpoints
from migrations.rehearsal.localserver import LocalServer
from tests.shapes import Lab, Shape, assert_not_frozen, assert_untouched

PEOPLE = Shape(
    schema="people",
    ddl="""
        CREATE TABLE people.members (handle text PRIMARY KEY, name text NOT NULL);
        CREATE TABLE people.badges (id int PRIMARY KEY, code varchar(20) UNIQUE, fixed text COLLATE "C" UNIQUE);
        CREATE TABLE people.notes (id int PRIMARY KEY, body text);
    """,
    fill="INSERT INTO people.members VALUES ('apple', 'A'), ('Banana', 'B'), ('cherry', 'C');",
)
NUMBERS = Shape(
    schema="numbers",
    ddl="CREATE TABLE numbers.readings (id int PRIMARY KEY, label text, note text COLLATE \"C\");"
    " CREATE INDEX ON numbers.readings (note);",
    fill="INSERT INTO numbers.readings VALUES (1, 'one', 'x'), (2, 'two', 'y');",
)

# Sorts upper case before lower case (code points); ICU's en-US sorts apple, Banana, cherry.
LIBC_C = sql.SQL("LOCALE_PROVIDER libc LC_COLLATE 'C' LC_CTYPE 'C'")
ICU_EN = sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LC_COLLATE 'C' LC_CTYPE 'C'")


@pytest.fixture
def lab(source_server: LocalServer, target_server: LocalServer) -> Iterator[Lab]:
    lab = Lab(source_server, target_server)
    yield lab
    lab.close()


def database(lab: Lab, server: LocalServer, locale: sql.Composable) -> str:
    name = f"collation_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        if not conn.execute("SELECT EXISTS (SELECT FROM pg_collation WHERE collprovider = 'i')").fetchone()[0]:
            pytest.fail("the test servers' PostgreSQL has no ICU; this test needs two collations that differ")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ").format(sql.Identifier(name)) + locale)
    lab.databases.append((server, name))
    return server.conninfo(name)


def endpoints(lab: Lab, shape: Shape, source_locale: sql.Composable, target_locale: sql.Composable) -> Endpoints:
    source = database(lab, lab.source_server, source_locale)
    shape.build(source)
    target = database(lab, lab.target_server, target_locale)
    return Endpoints(source, shape.schema, target, shape.schema)


def order(conninfo: str) -> list[str]:
    with psycopg.connect(conninfo) as conn:
        return [h for (h,) in conn.execute("SELECT x FROM (VALUES ('apple'), ('Banana'), ('cherry')) v(x) ORDER BY 1")]


def test_the_two_collations_order_text_keys_differently(lab: Lab) -> None:
    moved = endpoints(lab, PEOPLE, LIBC_C, ICU_EN)
    assert order(moved.source) == ["Banana", "apple", "cherry"]
    assert order(moved.target) == ["apple", "Banana", "cherry"]


def test_plan_refuses_a_target_with_another_collation_naming_the_text_keys(lab: Lab) -> None:
    moved = endpoints(lab, PEOPLE, LIBC_C, ICU_EN)
    with pytest.raises(CollationMismatch) as refused:
        engine.plan(moved, PEOPLE.init_sql)
    message = str(refused.value)
    assert "\n" not in message
    # The default-collated key columns; not badges.fixed (COLLATE "C"), not notes.body (no index).
    assert "the key columns badges.code, members.handle would order" in message
    assert f"target {moved.target_identity} sorts text by collation en-US (icu)" in message
    assert f"source {moved.source_identity} by C (libc)" in message
    assert "The source is not frozen and nothing was written" in message and "run the same command again" in message
    assert_not_frozen(moved.source, PEOPLE.schema)
    assert_untouched(moved.target, PEOPLE.schema)


def test_migrate_refuses_it_before_the_freeze(lab: Lab) -> None:
    moved = endpoints(lab, PEOPLE, ICU_EN, LIBC_C)
    with pytest.raises(CollationMismatch, match=r"target .* sorts text by collation C \(libc\), source .* by en-US \(icu\)"):
        engine.migrate(moved, init_sql=PEOPLE.init_sql)
    assert_not_frozen(moved.source, PEOPLE.schema)
    assert_untouched(moved.target, PEOPLE.schema)


def test_a_schema_without_default_collated_text_keys_moves(lab: Lab) -> None:
    moved = endpoints(lab, NUMBERS, LIBC_C, ICU_EN)
    report = engine.migrate(moved, init_sql=NUMBERS.init_sql)
    assert [t.rows for t in report.tables] == [2]
    with psycopg.connect(moved.target) as conn:
        assert conn.execute("SELECT count(*) FROM numbers.readings").fetchone()[0] == 2


def test_the_same_collation_spelled_otherwise_is_the_same(lab: Lab) -> None:
    """en_US.UTF-8 and en_US.utf8 are one libc locale; C of libc and of ICU are not the same thing."""
    assert Locale("libc", "en_US.UTF-8").key == Locale("libc", "en_US.utf8").key
    assert Locale("libc", "C").key != Locale("icu", "C").key
    moved = endpoints(lab, PEOPLE, LIBC_C, LIBC_C)
    assert not engine.plan(moved, PEOPLE.init_sql).differences
