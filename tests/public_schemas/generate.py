"""Deterministic data for the public sample schemas: every table filled, no sample project's own data.

``fill_pagila`` and ``fill_chinook`` take a superuser connection to a
database where the schema file was just loaded (so every sequence and
identity starts at 1) and fill every table with seeded rows that respect the
foreign keys, the checks, the partition bounds and the unique indexes. Keys
come from the tables' own defaults (``nextval`` for Pagila, identity columns
for Chinook), as an application would have drawn them; a few rows are
deleted afterwards so that sequences stand past gaps.

Awkward values on purpose: NULLs in every nullable column, unicode, quotes,
backslashes, COPY's own null marker as text, tabs and newlines, empty strings
and arrays, arrays with NULL elements, bytea with zero bytes, a tsvector the
trigger would not compute, timestamps with microseconds, BC and infinity,
numeric NaN, a payment exactly on a partition bound and a self-reference that
points forward.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
from psycopg import sql

SCHEMA = "public"

AWKWARD = (
    "O'Brien",
    'say "cheese"',
    "back\\slash",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "Zoë Ñandú",
    "Łódź",
    "日本語のタイトル",
    "🎬 emoji",
    " leading",
    "trailing ",
    "NULL",
    "\\N",
    "comma, inside",
    "{braces}",
    "50% off",
    "semi;colon",
    "\u00a0nbsp\u00a0",
    "e\u0301 combining",
)

_SYLLABLES = ("ka", "ri", "mo", "le", "tan", "bel", "dor", "vi", "sa", "nu", "gre", "lo", "pe", "mar", "zu", "quin")


# ------------------------------------------------------------------ helpers
def _word(rng: random.Random, low: int = 2, high: int = 3) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(low, high))).capitalize()


def _awkward_or(i: int, plain: str, *, every: int = 13, limit: int | None = None) -> str:
    """Every ``every``-th value is one of :data:`AWKWARD`, the others ``plain``; cut to ``limit`` characters."""
    value = AWKWARD[(i // every) % len(AWKWARD)] if i % every == 0 else plain
    return value[:limit] if limit is not None else value


def _maybe(rng: random.Random, value: object, null_share: float) -> object:
    return None if rng.random() < null_share else value


def _moment(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A moment in ``[start, end)`` with microseconds."""
    span = int((end - start) / timedelta(microseconds=1))
    return start + timedelta(microseconds=rng.randrange(span))


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    """A two-decimal amount between ``low`` and ``high`` cents."""
    return Decimal(rng.randint(low, high)) / 100


def _copy(conn: psycopg.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(SCHEMA, table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _load(conn: psycopg.Connection, table: str, key: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """COPY ``rows`` letting ``key`` take its default, then check that it drew 1..len(rows)."""
    _copy(conn, table, columns, rows)
    drawn = conn.execute(
        sql.SQL("SELECT count(*), min({k}), max({k}) FROM {t}").format(k=sql.Identifier(key), t=sql.Identifier(SCHEMA, table))
    ).fetchone()
    assert drawn == (len(rows), 1, len(rows)), f"{table}.{key} did not draw 1..{len(rows)}: {drawn}"


# ------------------------------------------------------------------- Pagila
PAYMENT_FROM = datetime(2022, 1, 1, tzinfo=UTC)  # the first partition's lower bound
PAYMENT_UNTIL = datetime(2022, 8, 1, tzinfo=UTC)  # the last partition's upper bound
PAGILA_SIZES = {
    "country": 60, "city": 300, "address": 600, "customer": 500, "actor": 200,
    "film": 1000, "inventory": 3000, "rental": 4000,
}
FULLTEXT_BY_HAND_EVERY = 50  # film ids divisible by this carry a tsvector the trigger would not compute
TRIGGER_STATES = (  # as the operators left them: one of each non-default tgenabled
    ("film", "film_fulltext_trigger", sql.SQL("ENABLE ALWAYS")),
    ("store", "last_updated", sql.SQL("DISABLE")),
    ("language", "last_updated", sql.SQL("ENABLE REPLICA")),
)


def fill_pagila(conn: psycopg.Connection, seed: int = 1) -> None:
    """Fill every Pagila table (``pagila-schema.sql`` of v3.1.0) and leave some triggers in other states."""
    rng = random.Random(seed)
    n = PAGILA_SIZES

    def touched() -> datetime:
        return _moment(rng, datetime(2021, 6, 1, tzinfo=UTC), PAYMENT_FROM)

    languages = ("English", "Italian", "Japanese", "Mandarin", "French", "German", "Türkçe", "日本語 (Nihongo)")
    _load(conn, "language", "language_id", ("name", "last_update"), [(name, touched()) for name in languages])
    _load(conn, "country", "country_id", ("country", "last_update"),
          [(_awkward_or(i, _word(rng) + "land"), touched()) for i in range(n["country"])])
    _load(conn, "city", "city_id", ("city", "country_id", "last_update"),
          [(_awkward_or(i, _word(rng, 1, 3)), rng.randint(1, n["country"]), touched()) for i in range(n["city"])])
    _load(conn, "address", "address_id", ("address", "address2", "district", "city_id", "postal_code", "phone", "last_update"), [
        (
            f"{rng.randint(1, 9999)} {_awkward_or(i, _word(rng))} Street",
            rng.choice((None, None, None, "", f"Apt. {rng.randint(1, 99)}", rng.choice(AWKWARD))),
            _word(rng),
            rng.randint(1, n["city"]),
            _maybe(rng, f"{rng.randint(0, 99999):05d}", 0.1),
            rng.choice(("", f"{rng.randint(10**9, 10**10 - 1)}", f"+{rng.randint(1, 999)} ({rng.randint(100, 999)}) 555-0100")),
            touched(),
        )
        for i in range(n["address"])
    ])
    stores = 3
    _load(conn, "store", "store_id", ("manager_staff_id", "address_id", "last_update"),
          [(2 * s + 1, s + 1, touched()) for s in range(stores)])  # staff 1, 3, 5 manage; no foreign key here
    staff = 2 * stores
    _load(conn, "staff", "staff_id", ("first_name", "last_name", "address_id", "email", "store_id", "active", "username",
                                      "password", "picture", "last_update"), [
        (
            _awkward_or(i, _word(rng), every=3),
            _word(rng),
            stores + i + 1,
            _maybe(rng, f"staff{i}@example.org", 0.3),
            i // 2 + 1,
            i != 4,
            f"user_{i}",
            _maybe(rng, f"{rng.getrandbits(160):040x}", 0.3),
            (None, b"", bytes([0, 255, 0, 92, 39, 34]) + rng.randbytes(200))[i % 3],
            touched(),
        )
        for i in range(staff)
    ])
    _load(conn, "customer", "customer_id", ("store_id", "first_name", "last_name", "email", "address_id", "activebool",
                                            "create_date", "last_update", "active"), [
        (
            rng.randint(1, stores),
            _awkward_or(i, _word(rng)),
            _awkward_or(i + 5, _word(rng, 2, 4)),
            rng.choice((None, f"c{i}@example.org", f"o'neil+{i}@例え.jp")),
            rng.randint(stores + staff + 1, n["address"]),
            rng.random() > 0.05,
            date(2020, 1, 1) + timedelta(days=rng.randrange(730)),
            _maybe(rng, touched(), 0.05),
            rng.choice((None, 0, 1, 1, 1)),
        )
        for i in range(n["customer"])
    ])
    _load(conn, "actor", "actor_id", ("first_name", "last_name", "last_update"),
          [(_awkward_or(i, _word(rng)), _awkward_or(i + 7, _word(rng, 2, 4)), touched()) for i in range(n["actor"])])
    categories = ("Action", "Animation", "Children", "Classics", "Comedy", "Documentary", "Drama", "Family",
                  "Foreign", "Games", "Horror", "Music", "New", "Sci-Fi / Fantasy", "Ciné-Club", "Kids' Corner")
    _load(conn, "category", "category_id", ("name", "last_update"), [(name, touched()) for name in categories])

    features = (None, [], ["Trailers"], ["Deleted Scenes", "Behind the Scenes"], [None, "Commentaries"],
                ['with "quote"', "comma, inside", "back\\slash", "{brace}", ""])
    _load(conn, "film", "film_id", ("title", "description", "release_year", "language_id", "original_language_id", "rental_duration",
                                    "rental_rate", "length", "replacement_cost", "rating", "last_update", "special_features", "fulltext"), [
        (
            _awkward_or(i, f"{_word(rng)} {_word(rng)}", every=11),
            rng.choice((None, f"A {_word(rng)} story of a {_word(rng)} and a {_word(rng)}", rng.choice(AWKWARD) + " in Paris")),
            (None, 1901, 2155, rng.randint(1950, 2022), rng.randint(1950, 2022))[i % 5],
            rng.randint(1, len(languages)),
            _maybe(rng, rng.randint(1, len(languages)), 0.85),
            rng.randint(3, 7),
            rng.choice((Decimal("0.99"), Decimal("2.99"), Decimal("4.99"), Decimal("0.00"), Decimal("99.99"))),
            _maybe(rng, rng.randint(46, 185), 0.05),
            _money(rng, 999, 2999),
            rng.choice((None, "G", "PG", "PG-13", "R", "NC-17")),
            touched(),
            features[i % len(features)],
            "",  # film_fulltext_trigger computes it from title and description
        )
        for i in range(n["film"])
    ])
    film_actor: list[tuple[int, int, datetime]] = []
    film_category: list[tuple[int, int, datetime]] = []
    for film in range(1, n["film"] + 1):
        film_actor += [(actor, film, touched()) for actor in rng.sample(range(1, n["actor"] - 1), rng.randint(1, 5))]
        film_category += [(film, category, touched()) for category in rng.sample(range(1, len(categories) + 1), 2 if film % 10 == 0 else 1)]
    _copy(conn, "film_actor", ("actor_id", "film_id", "last_update"), film_actor)
    _copy(conn, "film_category", ("film_id", "category_id", "last_update"), film_category)
    _load(conn, "inventory", "inventory_id", ("film_id", "store_id", "last_update"),
          [(rng.randint(1, n["film"]), rng.randint(1, stores), touched()) for _ in range(n["inventory"])])

    step = (PAYMENT_UNTIL - PAYMENT_FROM) / n["rental"]
    rentals = []
    for i in range(n["rental"]):
        rented = PAYMENT_FROM + step * i + timedelta(microseconds=rng.randrange(int(step / timedelta(microseconds=1))))
        returned = None if rng.random() < 0.05 else rented + timedelta(days=rng.randint(1, 10), seconds=rng.randrange(86400))
        rentals.append((rented, rng.randint(1, n["inventory"]), rng.randint(1, n["customer"]), returned, rng.randint(1, staff), touched()))
    _load(conn, "rental", "rental_id", ("rental_date", "inventory_id", "customer_id", "return_date", "staff_id", "last_update"), rentals)

    payments = []
    for rental_id, (rented, _inventory, customer, _returned, _staff, _touched) in enumerate(rentals, start=1):
        for _ in range(rng.choice((0, 1, 1, 1, 1, 1, 1, 1, 2, 2))):
            paid = min(rented + timedelta(seconds=rng.randrange(3 * 86400)), PAYMENT_UNTIL - timedelta(microseconds=1))
            amount = rng.choice((_money(rng, 99, 1199), _money(rng, 99, 1199), Decimal("0.00"), Decimal("-5.00"), Decimal("999.99")))
            payments.append([customer, rng.randint(1, staff), rental_id, amount, paid])
    payments[1][4] = datetime(2022, 2, 1, tzinfo=UTC)  # exactly the lower bound of payment_p2022_02
    payments[-1][4] = PAYMENT_UNTIL - timedelta(microseconds=1)  # the last instant payment_p2022_07 takes
    _load(conn, "payment", "payment_id", ("customer_id", "staff_id", "rental_id", "amount", "payment_date"), payments)

    # Gaps: the sequences stand past the highest remaining key.
    conn.execute("DELETE FROM public.actor WHERE actor_id > %s", (n["actor"] - 2,))
    conn.execute("DELETE FROM public.payment WHERE payment_id = %s", (len(payments),))

    # A tsvector the trigger would not compute, written with the triggers quiet (as a replica would).
    conn.execute("SET session_replication_role = replica")
    conn.execute(
        "UPDATE public.film SET fulltext = setweight(to_tsvector('simple', 'Ünïcödé quote''s ' || film_id), 'A')"
        " || 'handmade:1B'::tsvector WHERE film_id %% %s = 0",
        (FULLTEXT_BY_HAND_EVERY,),
    )
    conn.execute("UPDATE public.film SET fulltext = ''::tsvector WHERE film_id = 1")
    conn.execute("RESET session_replication_role")
    for table, trigger, state in TRIGGER_STATES:
        conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(sql.Identifier(SCHEMA, table), state, sql.Identifier(trigger)))


# ------------------------------------------------------------------ Chinook
CHINOOK_SIZES = {"artist": 300, "album": 600, "track": 3000, "customer": 400, "invoice": 1500, "playlist": 30}


def fill_chinook(conn: psycopg.Connection, seed: int = 1) -> None:
    """Fill every Chinook table (``Chinook_PostgreSql_AutoIncrementPKs.sql``, identity columns GENERATED ALWAYS)."""
    rng = random.Random(seed)
    n = CHINOOK_SIZES

    genres = 25
    _load(conn, "genre", "genre_id", ("name",), [(None if i == genres - 1 else _awkward_or(i, _word(rng), every=4),) for i in range(genres)])
    media = ("Lossless «FLAC»", "MPEG-1 Layer III", "Vinyl rip", "Stream (64 kbps)", None)
    _load(conn, "media_type", "media_type_id", ("name",), [(m,) for m in media])
    _load(conn, "artist", "artist_id", ("name",), [(_maybe(rng, _awkward_or(i, f"The {_word(rng)}s"), 0.03),) for i in range(n["artist"])])
    _load(conn, "album", "album_id", ("title", "artist_id"),
          [(_awkward_or(i, f"{_word(rng)} {_word(rng)}", every=7), rng.randint(1, n["artist"] - 1)) for i in range(n["album"])])
    _load(conn, "track", "track_id", ("name", "album_id", "media_type_id", "genre_id", "composer", "milliseconds", "bytes", "unit_price"), [
        (
            _awkward_or(i, f"{_word(rng)} {_word(rng, 1, 2)}", every=9),
            _maybe(rng, rng.randint(1, n["album"]), 0.02),
            rng.randint(1, len(media)),
            _maybe(rng, rng.randint(1, genres), 0.02),
            rng.choice((None, None, _word(rng), f"{_word(rng)}, {_word(rng)} & {_word(rng)}", rng.choice(AWKWARD))),
            rng.choice((0, rng.randint(1000, 5_000_000))),
            rng.choice((None, 0, rng.randint(10_000, 20_000_000), 2**31 - 1)),
            Decimal("NaN") if i == 6 else rng.choice((Decimal("0.99"), Decimal("1.99"), Decimal("0.00"))),
        )
        for i in range(n["track"])
    ])

    # Employee 1 reports to nobody, 2 and 3 to 1, 4 to 12 (a reference forward in the same table), the rest to 2 or 3.
    employees = 12
    reports_to = [None, 1, 1, employees] + [rng.choice((2, 3)) for _ in range(employees - 4)]
    births: list[object] = [datetime(1940, 1, 1) + timedelta(days=rng.randrange(20000), microseconds=rng.randrange(10**6)) for _ in range(employees)]
    births[-1] = "0044-03-15 12:00:00 BC"
    hires: list[object] = [datetime(2002, 1, 1) + timedelta(days=rng.randrange(4000)) for _ in range(employees)]
    hires[-2] = "infinity"  # hired, some day
    _load(conn, "employee", "employee_id", ("last_name", "first_name", "title", "reports_to", "birth_date", "hire_date", "address",
                                            "city", "state", "country", "postal_code", "phone", "fax", "email"), [
        (
            _awkward_or(i, _word(rng), every=5, limit=20),
            _word(rng)[:20],
            ("General Manager", "Sales Manager", "IT Manager", "Sales Support Agent", "IT Staff")[min(i, 4)],
            reports_to[i],
            births[i],
            hires[i],
            _maybe(rng, f"{rng.randint(1, 999)} {_word(rng)} Ave", 0.2),
            _word(rng),
            _maybe(rng, _word(rng)[:2].upper(), 0.3),
            _awkward_or(i, _word(rng), every=4, limit=40),
            _maybe(rng, f"T{rng.randint(0, 9)}K {rng.randint(0, 9)}A{rng.randint(0, 9)}", 0.2),
            f"+1 (780) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
            _maybe(rng, f"+1 (780) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}", 0.6),
            _maybe(rng, f"e{i}@chinookcorp.example", 0.1),
        )
        for i in range(employees)
    ])
    agents = (3, 4, 5)
    customers = [
        (
            _awkward_or(i, _word(rng), limit=40),
            _awkward_or(i + 3, _word(rng), limit=20),
            _maybe(rng, f"{_word(rng)} {rng.choice(('Ltd.', 'GmbH', 'S.A.', 'Ltda.'))}", 0.7),
            _maybe(rng, f"{rng.randint(1, 999)} {_word(rng)} Street", 0.05),
            _word(rng),
            _maybe(rng, _word(rng)[:2].upper(), 0.5),
            _awkward_or(i, _word(rng), every=17, limit=40),
            _maybe(rng, f"{rng.randint(0, 99999):05d}", 0.1),
            _maybe(rng, f"+{rng.randint(1, 99)} {rng.randint(10**7, 10**8 - 1)}", 0.05),
            _maybe(rng, f"+{rng.randint(1, 99)} {rng.randint(10**7, 10**8 - 1)}", 0.8),
            f"customer{i}@example.{rng.choice(('com', 'org', 'co.uk', 'рф'))}",
            _maybe(rng, rng.choice(agents), 0.1),
        )
        for i in range(n["customer"])
    ]
    _load(conn, "customer", "customer_id", ("first_name", "last_name", "company", "address", "city", "state", "country",
                                            "postal_code", "phone", "fax", "email", "support_rep_id"), customers)

    lines: list[tuple[int, int, Decimal, int]] = []
    invoices = []
    for invoice_id in range(1, n["invoice"] + 1):
        customer_id = rng.randint(1, n["customer"])
        customer = customers[customer_id - 1]
        own = [(invoice_id, rng.randint(1, n["track"]), rng.choice((Decimal("0.99"), Decimal("1.99"))), rng.choice((1, 1, 1, 2, 3)))
               for _ in range(rng.choice((0, 1, 2, 3, 4, 5)))]
        lines += own
        invoices.append((
            customer_id,
            datetime(2021, 1, 1) + timedelta(days=rng.randrange(1800), microseconds=rng.choice((0, rng.randrange(10**6)))),
            customer[3], customer[4], customer[5], customer[6], customer[7],
            sum((price * quantity for _i, _t, price, quantity in own), Decimal("0.00")),
        ))
    _load(conn, "invoice", "invoice_id", ("customer_id", "invoice_date", "billing_address", "billing_city", "billing_state",
                                          "billing_country", "billing_postal_code", "total"), invoices)
    _load(conn, "invoice_line", "invoice_line_id", ("invoice_id", "track_id", "unit_price", "quantity"), lines)

    _load(conn, "playlist", "playlist_id", ("name",),
          [(None if i == 3 else _awkward_or(i, f"{_word(rng)} mix", every=6),) for i in range(n["playlist"])])
    # The last playlist stays empty.
    _copy(conn, "playlist_track", ("playlist_id", "track_id"), [
        (playlist, track)
        for playlist in range(1, n["playlist"])
        for track in sorted(rng.sample(range(1, n["track"] + 1), rng.randint(0, 200)))
    ])

    # Gaps: the identities stand past the highest remaining key.
    conn.execute("DELETE FROM public.artist WHERE artist_id = %s", (n["artist"],))
    conn.execute("DELETE FROM public.invoice_line WHERE invoice_line_id = %s", (len(lines),))
