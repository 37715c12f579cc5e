"""Is a copied schema the same as its source? The benchmark's own check, independent of the engine's.

Data: per table, the row count and the sum of a 64-bit hash of every row's
whole text rendering (order-independent, computed in each server; both sides
use the engine's fixed session settings so renderings agree). Structure: columns,
indexes, constraints (with whether they are validated) and sequence positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from migrations.connection import SESSION_OPTIONS
from migrations.parallel import run_all

_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY pg_total_relation_size(c.oid) DESC, 1
"""

# The whole row's text rendering, hashed: another function than the engine's checksum on purpose.
_ROWS = "SELECT count(*), coalesce(sum(hashtextextended(t::text, 11)), 0) FROM {table} AS t"

_COLUMNS = """
SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || udt_name || ' ' || is_nullable
       || ' ' || coalesce(column_default, '') || ' ' || is_identity || ' ' || ordinal_position
FROM information_schema.columns WHERE table_schema = %s
"""

_INDEXES = "SELECT tablename || ': ' || indexdef FROM pg_indexes WHERE schemaname = %s"

_CONSTRAINTS = """
SELECT con.conrelid::regclass::text || ' ' || con.conname || ': ' || pg_get_constraintdef(con.oid)
       || CASE WHEN con.convalidated THEN '' ELSE ' NOT VALID' END
FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace WHERE n.nspname = %s
"""

_SEQUENCES = "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = %s"  # NULL: never called


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, tuple]
    structure: dict[str, frozenset] = field(default_factory=dict)


def connect(conninfo: str) -> psycopg.Connection:
    return psycopg.connect(conninfo, options=SESSION_OPTIONS, autocommit=True)


def tables(conninfo: str, schema: str) -> list[str]:
    with connect(conninfo) as conn:
        return [name for (name,) in conn.execute(_TABLES, (schema,))]


def snapshot(conninfo: str, schema: str, jobs: int, *, structure: bool = True) -> Snapshot:
    """Counts and hashes of every table of ``schema`` (``jobs`` at a time), and its structure."""
    names = tables(conninfo, schema)

    def rows(name: str) -> Callable[[], tuple]:
        def run() -> tuple:
            with connect(conninfo) as conn:
                return tuple(conn.execute(sql.SQL(_ROWS).format(table=sql.Identifier(schema, name))).fetchone())
        return run

    data = dict(zip(names, run_all(jobs, [rows(name) for name in names])))
    shape: dict[str, frozenset] = {}
    if structure:
        with connect(conninfo) as conn:
            for kind, query in (("column", _COLUMNS), ("index", _INDEXES), ("constraint", _CONSTRAINTS)):
                shape[kind] = frozenset(r[0] for r in conn.execute(query, (schema,)))
            shape["sequence"] = frozenset(
                f"{name} at {value}" for name, value in conn.execute(_SEQUENCES, (schema,))
            )
    return Snapshot(data, shape)


def differences(source: Snapshot, target: Snapshot, *, structure: bool = True) -> list[str]:
    """What differs in data and structure, as sentences; empty when the target is a faithful copy.

    Sequence positions are left to :func:`sequence_differences`.
    """
    found = [f"table {name} is missing" for name in sorted(source.tables.keys() - target.tables.keys())]
    found += [f"table {name} is extra" for name in sorted(target.tables.keys() - source.tables.keys())]
    for name in sorted(source.tables.keys() & target.tables.keys()):
        (src_rows, *src_hash), (tgt_rows, *tgt_hash) = source.tables[name], target.tables[name]
        if src_rows != tgt_rows:
            found.append(f"table {name} has {tgt_rows} rows, the source {src_rows}")
        elif src_hash != tgt_hash:
            found.append(f"table {name} has other content than the source")
    if structure:
        for kind in sorted(source.structure.keys() - {"sequence"}):
            missing = source.structure[kind] - target.structure.get(kind, frozenset())
            extra = target.structure.get(kind, frozenset()) - source.structure[kind]
            found += [f"{kind} missing: {item}" for item in sorted(missing)]
            found += [f"{kind} extra: {item}" for item in sorted(extra)]
    return found


def sequence_differences(source: Snapshot, target: Snapshot) -> list[str]:
    """Sequences whose position differs (a service's next insert would draw an id already used)."""
    theirs = {item.split(" at ")[0]: item for item in target.structure.get("sequence", frozenset())}
    found = []
    for item in sorted(source.structure.get("sequence", frozenset())):
        name = item.split(" at ")[0]
        if name not in theirs:
            found.append(f"sequence {name} is missing")
        elif theirs[name] != item:
            found.append(f"sequence {theirs[name]}, the source {item.split(' at ')[1]}")
    return found
