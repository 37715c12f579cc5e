"""The init scripts (sql/*_init.sql) and the sample data generator (migrations/sample_data.py).

Against a real PostgreSQL server (the session's ``source_server``). Fills run
at a small scale so the module takes a few seconds.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from migrations.connection import connect
from migrations.rehearsal.sample_data import INIT_SCRIPTS, SCHEMAS, create_shared_source, fill_shared_source

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
SCALE = 60

# Columns that name a partner living in another service's database after the split.
CROSS_SERVICE_PARTNER_COLUMNS = [
    ("onboarding", "onboarding_processes", "partner_id"),
    ("recruitment", "job_postings", "partner_id"),
    ("recruitment", "candidates", "referred_by_partner_id"),
    ("campaign_management", "campaign_partners", "partner_id"),
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def catalog_snapshot(conn: psycopg.Connection, schemas: list[str]) -> dict[str, list[tuple]]:
    """Everything the init scripts create in ``schemas``, with oids (a re-create would show)."""
    queries = {
        "schemas": """
            SELECT oid::bigint, nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%(s)s) ORDER BY 2""",
        "relations": """
            SELECT c.oid::bigint, n.nspname, c.relname, c.relkind::text, c.relfilenode::bigint
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%(s)s) ORDER BY 2, 3""",
        "columns": """
            SELECT n.nspname, c.relname, a.attnum, a.attname,
                   pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity::text,
                   pg_catalog.pg_get_expr(d.adbin, d.adrelid)
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE n.nspname = ANY(%(s)s) AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY 1, 2, 3""",
        "constraints": """
            SELECT co.oid::bigint, n.nspname, co.conname, co.contype::text,
                   pg_catalog.pg_get_constraintdef(co.oid)
            FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_namespace n ON n.oid = co.connamespace
            WHERE n.nspname = ANY(%(s)s) ORDER BY 2, 3""",
        "indexes": """
            SELECT n.nspname, i.indexrelid::bigint, pg_catalog.pg_get_indexdef(i.indexrelid)
            FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%(s)s) ORDER BY 1, 3""",
        "types": """
            SELECT t.oid::bigint, n.nspname, t.typname, t.typtype::text,
                   ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
                         WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
            FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = ANY(%(s)s) ORDER BY 2, 3""",
        "sequences": """
            SELECT schemaname, sequencename, data_type::text, start_value, increment_by, last_value
            FROM pg_catalog.pg_sequences WHERE schemaname = ANY(%(s)s) ORDER BY 1, 2""",
        "partitions": """
            SELECT c.oid::bigint, n.nspname, c.relname, pg_catalog.pg_get_expr(c.relpartbound, c.oid)
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%(s)s) AND c.relispartition ORDER BY 2, 3""",
        "functions": """
            SELECT p.oid::bigint, n.nspname, p.proname, p.prosrc
            FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = ANY(%(s)s) ORDER BY 2, 3""",
        "triggers": """
            SELECT t.oid::bigint, n.nspname, t.tgname, t.tgenabled::text, pg_catalog.pg_get_triggerdef(t.oid)
            FROM pg_catalog.pg_trigger t
            JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%(s)s) AND NOT t.tgisinternal ORDER BY 2, 3""",
        "row_security": """
            SELECT n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity, p.oid::bigint, p.polname,
                   p.polcmd::text, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                   pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_policy p ON p.polrelid = c.oid
            WHERE n.nspname = ANY(%(s)s) AND (c.relrowsecurity OR p.oid IS NOT NULL) ORDER BY 1, 2, 6""",
        "materialized_views": """
            SELECT c.oid::bigint, n.nspname, c.relname, c.relispopulated, pg_catalog.pg_get_viewdef(c.oid)
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%(s)s) AND c.relkind = 'm' ORDER BY 2, 3""",
    }
    return {name: conn.execute(query, {"s": schemas}).fetchall() for name, query in queries.items()}


def tables_of(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """The tables the fill writes to: plain and partitioned ones (a partition's rows are its parent's)."""
    return conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1, 2
        """,
        (list(SCHEMAS),),
    ).fetchall()


def partitions_of(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """The partitions of ``schema.table``, by name."""
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = (pg_catalog.quote_ident(%s) || '.' || pg_catalog.quote_ident(%s))::regclass
        ORDER BY 1
        """,
        (schema, table),
    ).fetchall()
    return [name for (name,) in rows]


# Tables whose updated_at a BEFORE UPDATE trigger keeps, per service (the fill edits some of their rows).
UPDATED_AT_TABLES = [
    ("public", "partners"),
    ("onboarding", "onboarding_processes"),
    ("recruitment", "job_postings"),
    ("recruitment", "candidates"),
    ("recruitment", "candidate_notes"),
    ("campaign_management", "campaigns"),
]


def primary_key(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT a.attname
        FROM pg_catalog.pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = (pg_catalog.quote_ident(%s) || '.' || pg_catalog.quote_ident(%s))::regclass
          AND i.indisprimary
        ORDER BY k.ord
        """,
        (schema, table),
    ).fetchall()
    return [name for (name,) in rows]


def table_checksums(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """(rows, md5 of every row's text in primary-key order) per table, computed in the server."""
    result = {}
    for schema, table in tables_of(conn):
        order = sql.SQL(", ").join(sql.Identifier("t", col) for col in primary_key(conn, schema, table))
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), md5(COALESCE(string_agg(t::text, E'\\n' ORDER BY {order}), '')) FROM {table} AS t"
            ).format(order=order, table=sql.Identifier(schema, table))
        ).fetchone()
        assert row is not None
        result[f"{schema}.{table}"] = (row[0], row[1])
    return result


def shared_source(conninfo: str) -> psycopg.Connection:
    """A connection with the engine's session settings, on a database with today's layout."""
    conn = connect(conninfo, "source")
    create_shared_source(conn, SQL_DIR)
    return conn


def filled(conninfo: str, seed: int) -> tuple[psycopg.Connection, dict[str, int]]:
    conn = shared_source(conninfo)
    counts = fill_shared_source(conn, scale=SCALE, seed=seed)
    return conn, counts


def scalar(conn: psycopg.Connection, query: sql.Composable | str, params: tuple | None = None) -> object:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


# --------------------------------------------------------------------------
# init scripts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS)
def test_init_script_applies_to_an_empty_database_and_reapplying_changes_nothing(
    schema: str, source_server, new_database
) -> None:
    script = (SQL_DIR / INIT_SCRIPTS[schema]).read_text(encoding="utf-8")
    with connect(new_database(source_server, "init"), "source") as conn:
        conn.execute(script)  # type: ignore[arg-type]  # a file, run as the engine does: one transaction
        conn.commit()
        first = catalog_snapshot(conn, [schema])

        conn.execute(script)  # type: ignore[arg-type]
        conn.commit()
        assert catalog_snapshot(conn, [schema]) == first

    # Plain tables, partitioned tables and their partitions.
    tables = [(s, t) for (_, s, t, kind, _) in first["relations"] if kind in ("r", "p")]
    assert len(tables) >= 4
    assert all(s == schema for s, _ in tables)
    assert any(kind == "e" for (_, s, _, kind, _) in first["types"]), "an enum type in the service's schema"
    primary_keys = {name for (_, _, name, kind, _) in first["constraints"] if kind == "p"}
    assert len(primary_keys) == len(tables), "every table (and every partition) has a primary key"
    assert any("BEFORE UPDATE" in definition for (*_, definition) in first["triggers"]), "an updated_at trigger"


@pytest.mark.parametrize("schema", SCHEMAS)
def test_init_script_leaves_grants_ownership_and_transactions_to_the_engine(schema: str) -> None:
    script = (SQL_DIR / INIT_SCRIPTS[schema]).read_text(encoding="utf-8")
    code = re.sub(r"--[^\n]*", "", script)
    forbidden = r"\b(GRANT|REVOKE|OWNER\s+TO|SET\s+search_path|BEGIN\s*;|COMMIT\s*;|START\s+TRANSACTION|INSERT|COPY)\b"
    assert not re.search(forbidden, code, re.IGNORECASE)
    assert script.startswith("--"), "a header comment"
    if schema != "public":
        assert re.search(rf"CREATE SCHEMA IF NOT EXISTS {schema};", code)
    for statement in re.findall(r"CREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|SCHEMA|MATERIALIZED\s+VIEW)\b[^;(]*", code):
        assert "IF NOT EXISTS" in statement, statement
    for statement in re.findall(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|TRIGGER)\b", code):
        assert "OR REPLACE" in statement, statement
    # A FORCEd policy would hide rows from the owner too: the migration, reading
    # the shared instance as the tables' owner, would be refused.
    assert not re.search(r"\bFORCE\s+ROW\s+LEVEL\s+SECURITY\b", code, re.IGNORECASE)


def test_the_four_scripts_together_give_todays_shared_layout(source_server, new_database) -> None:
    with shared_source(new_database(source_server, "shared")) as conn:
        snapshot = catalog_snapshot(conn, list(SCHEMAS))
        create_shared_source(conn, SQL_DIR)  # again: a no-op
        assert catalog_snapshot(conn, list(SCHEMAS)) == snapshot

        per_schema = {s: [t for (ts, t) in tables_of(conn) if ts == s] for s in SCHEMAS}
        assert all(len(tables) >= 4 for tables in per_schema.values()), per_schema

        # Foreign keys stay inside their schema: each service's database stands alone after the split.
        crossing = conn.execute(
            """
            SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_catalog.pg_constraint co
            JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
            JOIN pg_catalog.pg_class f ON f.oid = co.confrelid
            WHERE co.contype = 'f' AND c.relnamespace <> f.relnamespace
            """
        ).fetchall()
        assert crossing == []

        # ...and the columns naming another service's partner are indexed.
        for schema, table, column in CROSS_SERVICE_PARTNER_COLUMNS:
            assert scalar(
                conn,
                """
                SELECT count(*) FROM pg_catalog.pg_index i
                JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = (pg_catalog.quote_ident(%s) || '.' || pg_catalog.quote_ident(%s))::regclass
                  AND a.attname = %s
                """,
                (schema, table, column),
            ) == 1, (schema, table, column)

        # Every type the brief asks for is used somewhere.
        types = {row[4] for row in snapshot["columns"]}
        for wanted in ("uuid", "jsonb", "text", "text[]", "bytea", "boolean", "date", "timestamp with time zone",
                       "bigint", "integer"):
            assert wanted in types, wanted
        assert any(t.startswith("numeric") for t in types)
        identities = {row[6] for row in snapshot["columns"]}
        assert {"a", "d"} <= identities, "GENERATED ALWAYS and BY DEFAULT identity columns"
        assert any((row[7] or "").startswith("nextval(") for row in snapshot["columns"]), "a serial column"


def test_the_shared_layout_has_todays_realistic_shapes(source_server, new_database) -> None:
    with shared_source(new_database(source_server, "shapes")) as conn:
        # Every service keeps an updated_at with a BEFORE UPDATE row trigger of its own schema.
        triggers = conn.execute(
            """
            SELECT n.nspname, c.relname FROM pg_catalog.pg_trigger t
            JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'updated_at'
            WHERE n.nspname = ANY(%s) AND NOT t.tgisinternal AND t.tgenabled = 'O'
              AND f.pronamespace = c.relnamespace
              AND pg_catalog.pg_get_triggerdef(t.oid) LIKE '%%BEFORE UPDATE ON %% FOR EACH ROW %%'
            ORDER BY 1, 2
            """,
            (list(SCHEMAS),),
        ).fetchall()
        assert sorted(triggers) == sorted(UPDATED_AT_TABLES)
        assert {schema for schema, _ in triggers} == set(SCHEMAS)

        # A range-partitioned table: monthly partitions and a DEFAULT one, the primary key on
        # the partitioned table, the foreign keys declared on each partition (none inherited).
        partitions = partitions_of(conn, "campaign_management", "campaign_events")
        assert len(partitions) >= 4 and "campaign_events_default" in partitions
        assert primary_key(conn, "campaign_management", "campaign_events") == ["id", "occurred_at"]
        foreign_keys = conn.execute(
            """
            SELECT c.relname, count(*), bool_and(co.conparentid = 0)
            FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
            WHERE co.contype = 'f' AND c.relnamespace = 'campaign_management'::regnamespace
              AND c.relname LIKE 'campaign\\_events%'
            GROUP BY 1 ORDER BY 1
            """
        ).fetchall()
        assert foreign_keys == [(name, 2, True) for name in partitions]
        assert scalar(
            conn,
            "SELECT count(*) FROM pg_catalog.pg_index WHERE indrelid = 'campaign_management.campaign_events_default'::regclass"
            " AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits WHERE inhrelid = indexrelid)",
        ) == 1, "an index of the DEFAULT partition's own"

        # A materialized view, unpopulated until the fill refreshes it, with a unique index.
        assert conn.execute(
            "SELECT c.relispopulated, i.indisunique FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_index i ON i.indrelid = c.oid"
            " WHERE c.oid = 'campaign_management.campaign_performance'::regclass"
        ).fetchall() == [(False, True)]

        # Row-level security, not FORCEd (the owner reads every row), with policies.
        assert conn.execute(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, count(p.oid) FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_policy p ON p.polrelid = c.oid"
            " WHERE c.oid = 'recruitment.candidate_notes'::regclass GROUP BY 1, 2"
        ).fetchall() == [(True, False, 2)]


# --------------------------------------------------------------------------
# fill
# --------------------------------------------------------------------------


def test_fill_is_deterministic_per_seed_and_differs_across_seeds(source_server, new_database) -> None:
    with filled(new_database(source_server, "seed7a"), seed=7)[0] as a, \
         filled(new_database(source_server, "seed7b"), seed=7)[0] as b, \
         filled(new_database(source_server, "seed8"), seed=8)[0] as c:
        same_a, same_b, other = table_checksums(a), table_checksums(b), table_checksums(c)

    assert same_a == same_b
    assert all(rows > 0 for rows, _ in same_a.values())
    differing = [table for table in same_a if same_a[table][1] != other[table][1]]
    assert differing == list(same_a), "every table's content depends on the seed"


def test_fill_writes_proportional_counts_and_moves_sequences(source_server, new_database) -> None:
    conn, counts = filled(new_database(source_server, "fill"), seed=42)
    with conn:
        assert set(counts) == {f"{s}.{t}" for s, t in tables_of(conn)}
        for table, written in counts.items():
            schema, name = table.split(".")
            assert scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))) == written
        assert counts["public.partners"] == SCALE
        assert counts["public.partner_contacts"] == 3 * SCALE
        assert counts["onboarding.onboarding_steps"] == 5 * counts["onboarding.onboarding_processes"]
        assert 0.7 * SCALE <= counts["onboarding.onboarding_processes"] <= 1.3 * SCALE
        # 1 to 8 tracking events per campaign partner, routed to every partition;
        # the DEFAULT one holds those outside the months created, and only those.
        assert 2 * counts["campaign_management.campaign_partners"] <= counts["campaign_management.campaign_events"] \
            <= 7 * counts["campaign_management.campaign_partners"]
        per_partition = dict(conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM campaign_management.campaign_events GROUP BY 1"
        ).fetchall())
        partitions = partitions_of(conn, "campaign_management", "campaign_events")
        assert sorted(per_partition) == [f"campaign_management.{name}" for name in partitions]
        assert min(per_partition.values()) > 0
        assert per_partition["campaign_management.campaign_events_default"] == scalar(
            conn,
            "SELECT count(*) FROM campaign_management.campaign_events"
            " WHERE occurred_at < '2024-07-01 00:00+00' OR occurred_at >= '2025-01-01 00:00+00'",
        )
        # Events exactly on a month's first instant belong to that month's partition.
        on_boundary, misplaced = conn.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE tableoid::regclass::text <> 'campaign_management.campaign_events_'
                                                      || to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY_MM'))
            FROM campaign_management.campaign_events
            WHERE occurred_at AT TIME ZONE 'UTC' = date_trunc('month', occurred_at AT TIME ZONE 'UTC')
              AND occurred_at >= '2024-07-01 00:00+00' AND occurred_at < '2025-01-01 00:00+00'
            """
        ).fetchone()  # type: ignore[misc]
        assert on_boundary > 0 and misplaced == 0
        # Notes on screened candidates, some private to their recruiter, some for the team.
        assert counts["recruitment.candidate_notes"] > 0
        assert scalar(
            conn, "SELECT count(DISTINCT visibility) + count(DISTINCT recruiter) FROM recruitment.candidate_notes"
        ) >= 2 + 4

        # The materialized view is populated: one row per campaign, its totals those of the tables.
        assert scalar(conn, "SELECT count(*) FROM campaign_management.campaign_performance") == counts[
            "campaign_management.campaigns"
        ]
        assert scalar(conn, "SELECT sum(tracked_events) FROM campaign_management.campaign_performance") == counts[
            "campaign_management.campaign_events"
        ]

        # Every identity/serial sequence hands out an id past the column's max.
        columns = conn.execute(
            """
            SELECT n.nspname, c.relname, a.attname,
                   pg_catalog.pg_get_serial_sequence(pg_catalog.format('%%I.%%I', n.nspname, c.relname), a.attname)
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%s) AND c.relkind = 'r' AND a.attnum > 0
              AND pg_catalog.pg_get_serial_sequence(pg_catalog.format('%%I.%%I', n.nspname, c.relname), a.attname)
                  IS NOT NULL
            """,
            (list(SCHEMAS),),
        ).fetchall()
        assert len(columns) >= 8
        for schema, table, column, sequence in columns:
            assert scalar(
                conn,
                sql.SQL("SELECT pg_catalog.nextval(%s::regclass) > max({}) FROM {}").format(
                    sql.Identifier(column), sql.Identifier(schema, table)
                ),
                (sequence,),
            ), f"{schema}.{table}.{column}"
        conn.rollback()

        # A second fill is refused before anything is written.
        with pytest.raises(ValueError, match="already holds rows"):
            fill_shared_source(conn, scale=SCALE, seed=42)
        assert scalar(conn, "SELECT count(*) FROM public.partners") == SCALE


def test_fill_exercises_nulls_unicode_large_values_and_edge_cases(source_server, new_database) -> None:
    conn, _ = filled(new_database(source_server, "edges"), seed=3)
    with conn:
        # NULL (and a value) in every nullable column.
        # Partitions are checked through their partitioned table: it reads all of them.
        nullable = conn.execute(
            """
            SELECT table_schema, table_name, column_name FROM information_schema.columns
            WHERE table_schema = ANY(%s) AND is_nullable = 'YES'
              AND NOT (SELECT relispartition FROM pg_catalog.pg_class
                       WHERE oid = (pg_catalog.quote_ident(table_schema) || '.' || pg_catalog.quote_ident(table_name))::regclass)
            ORDER BY 1, 2, 3
            """,
            (list(SCHEMAS),),
        ).fetchall()
        assert len(nullable) > 40
        for schema, table, column in nullable:
            nulls, values = conn.execute(
                sql.SQL("SELECT count(*) FILTER (WHERE {c} IS NULL), count({c}) FROM {t}").format(
                    c=sql.Identifier(column), t=sql.Identifier(schema, table)
                )
            ).fetchone()  # type: ignore[misc]
            assert nulls > 0 and values > 0, f"{schema}.{table}.{column}: {nulls} NULLs, {values} values"

        # Unicode: accents, CJK, emoji (outside the BMP), RTL; control characters and COPY look-alikes.
        texts = [row[0] for row in conn.execute(
            "SELECT legal_name FROM public.partners UNION ALL SELECT full_name FROM public.partner_contacts"
            " UNION ALL SELECT notes FROM public.partners WHERE notes IS NOT NULL"
        )]
        chars = set("".join(texts))
        assert chars & set("éüñøçãł"), "accented Latin"
        assert any("\u4e00" <= ch <= "\u9fff" or "\u3040" <= ch <= "\u30ff" for ch in chars), "CJK"
        assert any(ord(ch) > 0xFFFF for ch in chars), "emoji"
        assert any("\u0600" <= ch <= "\u06ff" for ch in chars), "Arabic"
        assert {"\t", "\n", "\\"} <= chars
        notes = set(texts)
        assert "" in notes and "\\N looks like COPY's NULL marker" in notes

        # Large values (~1 MB) in text, bytea and jsonb.
        assert scalar(conn, "SELECT max(octet_length(content)) FROM onboarding.documents") >= 1_000_000
        assert scalar(conn, "SELECT max(octet_length(content)) FROM campaign_management.campaign_assets") >= 1_000_000
        assert scalar(conn, "SELECT max(octet_length(cover_letter)) FROM recruitment.applications") >= 1_000_000
        assert scalar(conn, "SELECT max(octet_length(profile::text)) FROM public.partners") >= 700_000
        assert scalar(conn, "SELECT count(*) FROM onboarding.documents WHERE octet_length(content) = 0") > 0

        # Numerics with many digits; JSON null, {} and [].
        assert scalar(conn, "SELECT max(length(attribution_score::text)) FROM campaign_management.campaign_metrics") >= 40
        assert scalar(conn, "SELECT max(length(annual_revenue::text)) FROM public.partners") >= 15
        assert scalar(
            conn,
            "SELECT array_agg(DISTINCT profile ORDER BY profile) FILTER (WHERE profile IN ('null', '{}', '[]'))"
            " FROM public.partners",
        ) is not None

        # Arrays: empty ones and ones with NULL elements.
        for table, column in [("public.partners", "skills"), ("onboarding.documents", "labels"),
                              ("recruitment.job_postings", "skills"), ("recruitment.candidates", "skills"),
                              ("campaign_management.campaigns", "keywords")]:
            schema, name = table.split(".")
            empty, with_null = conn.execute(
                sql.SQL(
                    "SELECT count(*) FILTER (WHERE cardinality({c}) = 0),"
                    " count(*) FILTER (WHERE array_position({c}, NULL) IS NOT NULL) FROM {t}"
                ).format(c=sql.Identifier(column), t=sql.Identifier(schema, name))
            ).fetchone()  # type: ignore[misc]
            assert empty > 0 and with_null > 0, table

        # Timestamps: years apart, microseconds, and not all on whole hours of one zone.
        span, fractional, minutes = conn.execute(
            "SELECT max(created_at) - min(created_at),"
            " count(*) FILTER (WHERE mod(extract(microseconds FROM created_at)::bigint, 1000000) <> 0),"
            " count(DISTINCT extract(minute FROM created_at)) FROM public.partners"
        ).fetchone()  # type: ignore[misc]
        assert span.days > 3 * 365 and fractional > 0 and minutes > 10


def test_fill_edits_rows_through_their_updated_at_trigger(source_server, new_database) -> None:
    conn, _ = filled(new_database(source_server, "edits"), seed=5)
    with conn:
        for schema, table in UPDATED_AT_TABLES:
            edited, untouched, earlier = conn.execute(
                sql.SQL(
                    "SELECT count(*) FILTER (WHERE updated_at > created_at), count(*) FILTER (WHERE updated_at = created_at),"
                    " count(*) FILTER (WHERE updated_at < created_at) FROM {}"
                ).format(sql.Identifier(schema, table))
            ).fetchone()  # type: ignore[misc]
            assert edited > 0 and untouched > 0 and earlier == 0, (schema, table, edited, untouched, earlier)
        assert scalar(conn, "SELECT bool_and(updated_at > created_at) FROM recruitment.candidate_notes WHERE pinned")

        # The trigger stamps the service's own updates, and keeps an updated_at the update sets itself.
        for schema, table in UPDATED_AT_TABLES:
            target = sql.Identifier(schema, table)
            first = scalar(conn, sql.SQL("SELECT min(id::text) FROM {}").format(target))
            stamped = scalar(
                conn,
                sql.SQL("UPDATE {} SET created_at = created_at WHERE id::text = %s RETURNING updated_at = now()").format(target),
                (first,),
            )
            kept = scalar(
                conn,
                sql.SQL(
                    "UPDATE {} SET updated_at = '2001-02-03 04:05:06+00' WHERE id::text = %s"
                    " RETURNING updated_at = '2001-02-03 04:05:06+00'"
                ).format(target),
                (first,),
            )
            assert stamped and kept, (schema, table)
        conn.rollback()


def test_candidate_notes_are_filtered_per_recruiter_but_their_owner_reads_them_all(source_server, new_database) -> None:
    conn, counts = filled(new_database(source_server, "notes"), seed=9)
    reader = f"notes_reader_{uuid.uuid4().hex[:8]}"
    with conn:
        # The owner (here a superuser, as the rehearsal's migration reads) sees every note.
        assert scalar(conn, "SELECT count(*) FROM recruitment.candidate_notes") == counts["recruitment.candidate_notes"]
        recruiter, own, team = conn.execute(
            "SELECT recruiter, count(*), (SELECT count(*) FROM recruitment.candidate_notes WHERE visibility = 'team')"
            " FROM recruitment.candidate_notes WHERE visibility = 'private' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        # Another role (the service's, today) sees the team's notes, and its recruiter's own.
        # All in one transaction, rolled back: the role is gone afterwards.
        try:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA recruitment TO {}").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("GRANT SELECT ON recruitment.candidate_notes TO {}").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(reader)))
            conn.execute("SET LOCAL row_security = on")  # the engine's sessions run with it off: fail, not filter
            assert scalar(conn, "SELECT count(*) FROM recruitment.candidate_notes") == team
            conn.execute("SELECT pg_catalog.set_config('recruitment.recruiter', %s, true)", (recruiter,))
            assert scalar(conn, "SELECT count(*) FROM recruitment.candidate_notes") == team + own
        finally:
            conn.rollback()


def test_fill_names_only_partners_that_exist(source_server, new_database) -> None:
    conn, _ = filled(new_database(source_server, "xservice"), seed=11)
    with conn:
        for schema, table, column in CROSS_SERVICE_PARTNER_COLUMNS:
            named, dangling = conn.execute(
                sql.SQL(
                    "SELECT count(x.{c}), count(x.{c}) FILTER (WHERE p.id IS NULL)"
                    " FROM {t} AS x LEFT JOIN public.partners AS p ON p.id = x.{c}"
                ).format(c=sql.Identifier(column), t=sql.Identifier(schema, table))
            ).fetchone()  # type: ignore[misc]
            assert named > 0 and dangling == 0, (schema, table, column, named, dangling)

        # "Profile 360°": partners with onboarding, recruitment and campaign data all at once.
        assert scalar(
            conn,
            """
            SELECT count(*) FROM public.partners p
            WHERE EXISTS (SELECT 1 FROM onboarding.onboarding_processes o WHERE o.partner_id = p.id)
              AND EXISTS (SELECT 1 FROM campaign_management.campaign_partners c WHERE c.partner_id = p.id)
              AND EXISTS (SELECT 1 FROM recruitment.job_postings j WHERE j.partner_id = p.id)
            """,
        ) > 0
