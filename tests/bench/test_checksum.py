"""The cheaper checksum the benchmark led to still sees every difference the text rendering sees.

Columns of some types are hashed as stored and the rest through their text
rendering; these tests change a copy in the ways a type's own hash would not
notice, and in the ways a sum of per-column hashes would not notice.
"""

from __future__ import annotations

import psycopg
import pytest

from migrations.catalog import read_catalog
from migrations.connection import SESSION_OPTIONS, Endpoints
from migrations.verify import HASH, MD5, checksum, verify_tables

SCHEMA = "kinds"

DDL = """
CREATE SCHEMA kinds;
CREATE TYPE kinds.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN kinds.padded AS bpchar;
CREATE TABLE kinds.everything (
    id          bigint PRIMARY KEY,
    small       smallint,
    flag        boolean,
    day         date,
    at          timestamptz,
    local_at    timestamp(3),
    clock       time,
    token       uuid,
    blob        bytea,
    name        text,
    code        varchar(20),
    fixed       char(4),
    loose       bpchar,
    padded      kinds.padded,
    amount      numeric,
    ratio       double precision,
    span        interval,
    doc         jsonb,
    raw         json,
    tags        text[],
    feeling     kinds.mood,
    address     inet,
    during      tstzrange,
    doubled     bigint GENERATED ALWAYS AS (id * 2) STORED
);
INSERT INTO kinds.everything
    (id, small, flag, day, at, local_at, clock, token, blob, name, code, fixed, loose, padded, amount, ratio, span,
     doc, raw, tags, feeling, address, during)
SELECT i, i % 100, i % 2 = 0, date '2024-01-01' + i, timestamptz '2024-01-01 00:00+00' + i * interval '1 minute',
       timestamp '2024-01-01' + i * interval '1 ms', time '00:00' + i * interval '1 second', md5(i::text)::uuid,
       decode(md5(i::text), 'hex'), 'name ' || i, 'c' || i, 'f' || (i % 10), 'l' || i, 'p' || i, i / 7.0, i / 3.0,
       i * interval '1 hour', jsonb_build_object('n', i, 'list', jsonb_build_array(jsonb_build_array(i), 2)),
       json_build_object('n', i), ARRAY['a', NULL, 'c' || i], (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::kinds.mood,
       ('10.0.0.' || (i % 250))::inet, tstzrange(timestamptz '2024-01-01 00:00+00', timestamptz '2024-01-01 00:00+00' + i * interval '1 day')
FROM generate_series(1, 200) AS i;
INSERT INTO kinds.everything (id) VALUES (0);  -- NULL in every column
UPDATE kinds.everything SET amount = 1.5 WHERE id = 1;
UPDATE kinds.everything SET ratio = 0 WHERE id = 3;
UPDATE kinds.everything SET span = interval '1 day' WHERE id = 4;
UPDATE kinds.everything SET doc = '{"n": 5, "list": [[5], 2]}' WHERE id = 5;
UPDATE kinds.everything SET doc = '{"n": 6}' WHERE id = 6;
UPDATE kinds.everything SET raw = '{"n": 7}' WHERE id = 7;
"""

# Each change keeps the row equal under the column type's own equality (or
# keeps every per-column sum), so only a faithful checksum notices it.
CHANGES = {
    "numeric scale": "UPDATE kinds.everything SET amount = 1.50 WHERE id = 1",
    "negative zero": "UPDATE kinds.everything SET ratio = '-0' WHERE id = 3",
    "interval units": "UPDATE kinds.everything SET span = interval '24 hours' WHERE id = 4",
    "jsonb nesting": """UPDATE kinds.everything SET doc = '{"n": 5, "list": [[5, 2]]}' WHERE id = 5""",
    "jsonb number scale": """UPDATE kinds.everything SET doc = '{"n": 6.0}' WHERE id = 6""",
    "json whitespace": """UPDATE kinds.everything SET raw = '{"n":7}' WHERE id = 7""",
    "bpchar trailing blank": "UPDATE kinds.everything SET loose = 'l8 ' WHERE id = 8",
    "domain trailing blank": "UPDATE kinds.everything SET padded = 'p9 ' WHERE id = 9",
    "NULL to empty text": "UPDATE kinds.everything SET name = '' WHERE id = 0",
    "NULL to empty domain": "UPDATE kinds.everything SET padded = '' WHERE id = 0",
    "array lower bound": "UPDATE kinds.everything SET tags = '[0:2]={a,NULL,c10}' WHERE id = 10",
    "inet mask": "UPDATE kinds.everything SET address = '10.0.0.11/24' WHERE id = 11",
    "values swapped between rows": "UPDATE kinds.everything SET name = CASE id WHEN 12 THEN 'name 13' ELSE 'name 12' END WHERE id IN (12, 13)",
    "columns swapped in a row": "UPDATE kinds.everything SET name = code, code = name WHERE id = 14",
    "microsecond": "UPDATE kinds.everything SET at = at + interval '1 microsecond' WHERE id = 15",
    "byte": "UPDATE kinds.everything SET blob = blob || '\\x00'::bytea WHERE id = 16",
    "row duplicated, another deleted": "DELETE FROM kinds.everything WHERE id = 17; INSERT INTO kinds.everything SELECT 1000, small, flag, day, at, local_at, clock, token, blob, name, code, fixed, loose, padded, amount, ratio, span, doc, raw, tags, feeling, address, during FROM kinds.everything WHERE id = 18",
}


@pytest.fixture
def pair(source_server, target_server, new_database):
    """Two databases with the same table and rows: the source and its faithful copy."""
    databases = [new_database(source_server, "kinds"), new_database(target_server, "kinds")]
    for conninfo in databases:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(DDL)
    return databases


def _sums(conninfo: str, method: str):
    with psycopg.connect(conninfo) as conn:
        table = read_catalog(conn, SCHEMA).tables["everything"]
    return checksum(lambda **kw: psycopg.connect(conninfo, options=SESSION_OPTIONS, **kw), SCHEMA, table, method)


@pytest.mark.parametrize("method", [HASH, MD5])
def test_a_faithful_copy_has_the_same_checksum(pair, method):
    source, target = pair
    assert _sums(source, method) == _sums(target, method)
    assert _sums(source, method).rows == 201


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_the_types_own_hash_would_miss_is_seen(pair, change):
    source, target = pair
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(CHANGES[change])
    assert _sums(source, HASH) != _sums(target, HASH)


def test_a_case_insensitive_collation_does_not_hide_a_changed_letter(source_server, target_server, new_database):
    databases = [new_database(source_server, "ci"), new_database(target_server, "ci")]
    for conninfo in databases:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "CREATE SCHEMA kinds;"
                " CREATE COLLATION kinds.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);"
                " CREATE TABLE kinds.everything (id int, name text COLLATE kinds.ci);"
                " INSERT INTO kinds.everything VALUES (1, 'Alice')"
            )
    source, target = databases
    assert _sums(source, HASH) == _sums(target, HASH)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE kinds.everything SET name = 'alice'")
    assert _sums(source, HASH) != _sums(target, HASH)


def test_verify_tables_compares_every_table_on_both_sides(pair):
    source, target = pair
    endpoints = Endpoints(source, SCHEMA, target, SCHEMA)
    with psycopg.connect(source) as conn:
        tables = list(read_catalog(conn, SCHEMA).tables.values())
    assert [v.identical for v in verify_tables(endpoints, tables, jobs=2)] == [True]
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(CHANGES["numeric scale"])
    [verification] = verify_tables(endpoints, tables, jobs=2)
    assert verification.table == "everything" and not verification.identical
