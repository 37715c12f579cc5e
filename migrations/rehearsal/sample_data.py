"""Deterministic, realistic sample data for a database laid out like today's shared instance.

Used by the engine tests, the rehearsal (``python -m migrations rehearse``) and
the benchmark, at sizes from a few thousand rows to millions. Every row is
generated inside the server (``INSERT ... SELECT ... FROM generate_series``);
Python only sends the statements, the seed and small vocabularies as
parameters.

Determinism: every pseudo-random value is ``hashtextextended(key, seed)`` of a
key naming the column and the row number (see the ``pg_temp`` helpers below),
ids are derived from row numbers, and rows built from other rows are numbered
with ``row_number()`` over a total order. The same ``(scale, seed)`` therefore
writes byte-identical data, whatever the session's TimeZone, DateStyle or
search_path; another seed writes other data.

Cross-service references: partner number ``i`` (1..scale) has the id
``pg_temp.uid('partner', i)``, so every onboarding process, job posting,
candidate referral and campaign partner names a partner that exists in
``public.partners``.

Today's shapes: an ``updated_at`` kept by a ``BEFORE UPDATE`` trigger in every
service (the fill edits some rows after writing them, so it differs from
``created_at``), campaign events in a table partitioned by month (a DEFAULT
partition included), a materialized view refreshed once the tables are full,
and recruiters' notes under row-level security (written, like everything
here, as the tables' owner).

Edge cases on purpose: NULL in every nullable column, empty strings, ``\\N``
and control characters in text, accents, CJK, RTL and emoji (with ZWJ), empty
arrays and arrays with NULL elements, JSON ``null``/``{}``/``[]``, numerics with
dozens of digits, timestamps entered as wall-clock times of zones with and
without DST (including gaps), empty and ~1 MB ``bytea``, ~1 MB text and jsonb.

The module knows nothing about Pulumi or pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = ["SCHEMAS", "INIT_SCRIPTS", "Sizes", "create_shared_source", "fill_shared_source", "grant_service_role"]

#: Today's schemas, one per service, in the order of :data:`INIT_SCRIPTS`.
SCHEMAS: tuple[str, ...] = ("public", "onboarding", "recruitment", "campaign_management")

#: The init script (under ``sql/``) that creates each schema of :data:`SCHEMAS`.
INIT_SCRIPTS: dict[str, str] = {
    "public": "partner_management_init.sql",
    "onboarding": "onboarding_init.sql",
    "recruitment": "recruitment_init.sql",
    "campaign_management": "campaign_management_init.sql",
}

_SEED_SETTING = "hexabuilders_sample.seed"


def _table_identifier(table: str) -> sql.Identifier:
    """``"schema.table"`` as a qualified identifier."""
    schema, name = table.split(".", 1)
    return sql.Identifier(schema, name)


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


def create_shared_source(conn: psycopg.Connection, sql_dir: Path) -> None:
    """Apply the four init scripts to one database: today's shared layout.

    Each script runs in its own transaction (committed here unless the caller
    already holds one). The scripts are idempotent, so this is safe to repeat.
    """
    for schema in SCHEMAS:
        script = (Path(sql_dir) / INIT_SCRIPTS[schema]).read_text(encoding="utf-8")
        with conn.transaction():
            # No parameters: psycopg sends the file as one simple query, so
            # its many statements (and DO blocks) run as written.
            conn.execute(sql.SQL(script))  # type: ignore[arg-type]  # a file, not a template


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Row-count drivers derived from ``scale`` (the number of partners).

    Child tables follow from these: 3 contacts per partner, ~1 onboarding
    process per partner with 5 steps, ~1.5 applications per candidate with
    ~1.5 recruiter notes per screened one, ~2 campaign partners per partner
    with ~3 days of metrics and ~4.5 tracking events each, and so on.
    """

    partners: int
    job_postings: int
    candidates: int
    campaigns: int
    max_partners_per_campaign: int

    @classmethod
    def for_scale(cls, scale: int) -> Sizes:
        campaigns = max(10, scale // 20)
        return cls(
            partners=scale,
            job_postings=max(12, scale // 4),
            candidates=scale,
            campaigns=campaigns,
            # uniform in 1..max, so ~2 campaign partners per partner on average
            max_partners_per_campaign=max(1, 4 * scale // campaigns),
        )


# --------------------------------------------------------------------------
# Vocabularies (values, sent as parameters)
# --------------------------------------------------------------------------

FIRST_NAMES = [
    "Ana", "José", "María José", "Zoë", "François", "Björn", "Łukasz", "Søren",
    "Nguyễn Văn", "Αλέξανδρος", "Владимир", "伟", "さくら", "민준", "محمد", "Ngozi",
    "Aroha", "Siobhán", "Jean-Luc", "Ñusta", "İlkay", "Chloé", "Raúl", "Dvořák",
]
LAST_NAMES = [
    "García", "Müller", "O'Brien", "Nakamura", "李", "김", "Ødegaard", "Łęcki",
    "Pérez-Ávila", "Ivanović", "Smith", "Nguyễn", "Schröder", "d'Arcy", "van der Berg",
    "Al-Fulan", "Kowalski", "Núñez", "Ó Súilleabháin", "张", "佐藤", "Çelik", "Ürgüp",
]
COMPANY_NAMES = [
    "Constructora Andina", "Müller & Söhne", "テクノ建設", "北京建筑", "Café Olé",
    "Ørsted Byg", "Société Générale du Bâtiment", "São Paulo Digital", "Rocket 🚀 Labs",
    "İstanbul Yapı", "ДомСтрой", "مجموعة البناء", "O'Reilly Builders", "Łódź Tech",
    "Hexa Ingeniería", 'Kraków "Quoted" Works', "Back\\slash Studio", "Zürich Präzision",
    "서울 솔루션", "Ñandú Logística", "🏗️ BuildCo", "Smörgåsbord AB", "Ōtautahi Design",
]
COMPANY_SUFFIXES = ["S.A.S.", "GmbH", "Ltda.", "株式会社", "Ltd.", "S.L.", "SARL", "A.Ş.", "ООО", "Inc.", "AB", "有限公司"]
EMAIL_DOMAINS = ["example.com", "example.co", "correo.example.es", "bücher.example", "例え.example", "mail.example.jp"]
JOB_TITLES = [
    "Gerente general", "Directora de compras", "CFO", "Ingeniero residente", "プロジェクトマネージャー",
    "Head of Partnerships 🤝", "Contadora", "Responsable RR. HH.", "Geschäftsführer", "Account manager",
]
STREETS = ["Calle 100", "Carrera 7", "Av. Paulista", "Hauptstraße", "Rue de la Paix", "銀座通り", "Gran Vía", "Broadway", "İstiklal Caddesi"]
# One place per index: parallel lists (a NULL region or postal code is a real case).
PLACES = [
    ("CO", "Bogotá", "Cundinamarca", "110111"),
    ("CO", "Medellín", "Antioquia", "050001"),
    ("MX", "Ciudad de México", "CDMX", "06600"),
    ("ES", "Málaga", "Andalucía", "29001"),
    ("DE", "München", "Bayern", "80331"),
    ("FR", "Besançon", "Bourgogne-Franche-Comté", "25000"),
    ("BR", "São Paulo", "SP", "01000-000"),
    ("JP", "東京", "東京都", "100-0001"),
    ("CN", "北京", "北京市", "100000"),
    ("KR", "서울", "서울특별시", "04524"),
    ("US", "New York", "NY", "10001"),
    ("US", "Phoenix", "AZ", "85001"),
    ("IN", "Bengaluru", "Karnataka", "560001"),
    ("NP", "काठमाडौं", "Bagmati", "44600"),
    ("EG", "القاهرة", "Cairo", None),
    ("AU", "Lord Howe Island", "NSW", "2898"),
    ("CA", "St. John's", "NL", "A1A 0A1"),
    ("IS", "Reykjavík", None, "101"),
    ("NZ", "Ōtautahi Christchurch", "Canterbury", "8011"),
    ("TR", "İstanbul", None, "34000"),
]
SKILLS = [
    "BIM", "Revit", "AutoCAD", "Ingeniería civil", "構造設計", "Gestión de obra 🚧", "Python", "SQL",
    "Kubernetes", "Façade design", "Sicherheitstechnik", "Liderazgo", "Diseño UX", "데이터 분석", "Español", "English",
]
NOTES = [
    "Cliente estratégico — renovar antes de diciembre.",
    "Línea 1\nLínea 2\n\tcon tabulación",
    "Comillas \"dobles\", 'simples' y barra invertida \\ al final \\",
    "Windows line ending\r\nsecond line",
    "日本語のメモ：契約更新は来年です。",
    "Emoji: 🏗️👷‍♀️🚀 and a ZWJ family 👨‍👩‍👧‍👦",
    "Arabic RTL: شريك موثوق",
    "Combining: e\u0301 vs é; Hangul: 한국어",
    "\\N looks like COPY's NULL marker",
    "NULL",
    "",
    "Tab\tseparated\tvalues",
    "Control chars: bell \x07, form feed \x0c, escape \x1b.",
    "Trailing spaces   ",
]
TAGS = [
    ("VIP ⭐", "#FFD700", "Socio prioritario"),
    ("Construcción", "#8B4513", None),
    ("Tecnología", None, "Software y hardware"),
    ("Sostenible 🌱", "#2E8B57", "Certificación verde"),
    ("Gobierno", "#1E90FF", None),
    ("Startup", "#FF4500", "Menos de 5 años"),
    ("Internacional 🌍", "#4682B4", "Opera en más de un país"),
    ("信頼できる", "#800080", "Trusted partner (JP)"),
    ("Riesgo alto", "#FF0000", "Revisar pagos\nantes de renovar"),
    ("Referido", None, None),
    ("Agencia", "#A0A0A0", "Agencia de talento"),
    ("Proveedor", "#008080", ""),
    ("Cliente", "#00008B", "Compra servicios"),
    ("Müller-Gruppe", "#556B2F", "Grupo empresarial"),
    ("Pyme", "#DAA520", "Pequeña y mediana empresa"),
    ("Licitación", "#C71585", "Participa en licitaciones públicas"),
    ("Nuevo", "#7FFF00", None),
    ("Inactivo", "#333333", "Sin actividad > 12 meses"),
]
CONTRACT_TITLES = [
    "Acuerdo marco de servicios", "Contrato de obra", "NDA — confidencialidad", "Rahmenvertrag",
    "業務委託契約", "Master Services Agreement", "Contrato de referidos 🤝", "Anexo técnico nº 2",
]
STEP_NAMES = ["Registro", "Verificación KYC", "Firma de contrato", "Capacitación", "Activación 🚀"]
DOCUMENTS = [  # (document_type, file_name, mime_type)
    ("cedula", "cédula_de_ciudadanía.pdf", "application/pdf"),
    ("rut", "RUT 2024.pdf", "application/pdf"),
    ("contract", "contrato_firmado_✍️.pdf", "application/pdf"),
    ("bank_certificate", "certificado-bancario.PDF", "application/pdf"),
    ("passport", "パスポート.jpg", "image/jpeg"),
    ("passport", "фото паспорта.png", "image/png"),
    ("id_card", "Ausweis (Rückseite).jpeg", "image/jpeg"),
    ("other", "scan 001.tiff", "image/tiff"),
]
JOB_POSTING_TITLES = [
    "Ingeniero/a civil", "Arquitecto/a BIM", "Desarrollador(a) backend", "データエンジニア", "Jefe de obra 👷",
    "Bauleiter (m/w/d)", "Analista de datos", "Diseñador(a) UX/UI", "Site reliability engineer", "Topógrafo/a",
]
COVER_LETTERS = [
    "Estimados señores:\nMe interesa mucho la vacante.\n\nCordialmente,\nAna",
    "Dear hiring team, I'd love to join — 10+ years in BIM.",
    "貴社の求人に応募いたします。よろしくお願いいたします。",
    "Sehr geehrte Damen und Herren, anbei meine Unterlagen.",
    "Hola 👋 — adjunto mi CV.\tDisponible de inmediato.",
]
LONG_PARAGRAPH = (
    "Experiencia en diseño estructural, gestión de obra y coordinación BIM en Bogotá, São Paulo y 東京; "
    "liderazgo de equipos multidisciplinarios 👷‍♀️🏗️, control de costos y cumplimiento normativo. "
)
# Recruiters as the service names them in the setting recruitment.recruiter (row-level security).
RECRUITERS = ["ana.garcia", "bjorn.lund", "sakura.tanaka", "ngozi.okafor", "jean-luc.dubois", "zoë.müller"]
RECRUITER_NOTES = [
    "Muy buena comunicación; pasar a entrevista técnica.",
    "Strong BIM portfolio, salary expectation above range.",
    "Referencias verificadas ✓ — dos empleadores anteriores.",
    "候補者は来月から勤務可能です。",
    "Prefers remote; open to one week per month on site.",
    "No se presentó a la llamada; reprogramada para el jueves.",
    "Pendiente: prueba práctica de AutoCAD.\nEnviar enunciado el lunes.",
    "Gehaltsvorstellung passt, Kündigungsfrist 3 Monate.",
    "⚠️ Do not contact before 2025 — signed non-compete.",
]
CAMPAIGN_NAMES = [
    "Lanzamiento Hexa", "Black Friday", "Feria de la Construcción", "Webinar BIM", "春のキャンペーン",
    "Referidos 🤝", "Expo São Paulo", "Sommeraktion", "Año Nuevo 🎉", "Partner summit",
]
ZONES = [
    "UTC", "America/Bogota", "America/Mexico_City", "Europe/Madrid", "Europe/Berlin", "America/Sao_Paulo",
    "Asia/Tokyo", "Asia/Shanghai", "Asia/Seoul", "America/New_York", "America/Phoenix", "Asia/Kolkata",
    "Asia/Kathmandu", "Africa/Cairo", "Australia/Lord_Howe", "America/St_Johns", "Atlantic/Reykjavik",
    "Pacific/Auckland", "Pacific/Chatham", "Europe/Istanbul",
]


def _parameters(sizes: Sizes) -> dict[str, object]:
    """Every value the fill statements use, by placeholder name."""
    return {
        "partners": sizes.partners,
        "job_postings": sizes.job_postings,
        "candidates": sizes.candidates,
        "campaigns": sizes.campaigns,
        "max_partners_per_campaign": sizes.max_partners_per_campaign,
        "tags": len(TAGS),
        "first_names": FIRST_NAMES,
        "last_names": LAST_NAMES,
        "company_names": COMPANY_NAMES,
        "company_suffixes": COMPANY_SUFFIXES,
        "email_domains": EMAIL_DOMAINS,
        "job_titles": JOB_TITLES,
        "streets": STREETS,
        "countries": [p[0] for p in PLACES],
        "cities": [p[1] for p in PLACES],
        "regions": [p[2] for p in PLACES],
        "postal_codes": [p[3] for p in PLACES],
        "skills": SKILLS,
        "notes": NOTES,
        "tag_names": [t[0] for t in TAGS],
        "tag_colors": [t[1] for t in TAGS],
        "tag_descriptions": [t[2] for t in TAGS],
        "contract_titles": CONTRACT_TITLES,
        "step_names": STEP_NAMES,
        "document_types": [d[0] for d in DOCUMENTS],
        "file_names": [d[1] for d in DOCUMENTS],
        "mime_types": [d[2] for d in DOCUMENTS],
        "job_posting_titles": JOB_POSTING_TITLES,
        "cover_letters": COVER_LETTERS,
        "long_paragraph": LONG_PARAGRAPH,
        "campaign_names": CAMPAIGN_NAMES,
        "recruiters": RECRUITERS,
        "recruiter_notes": RECRUITER_NOTES,
    }


# --------------------------------------------------------------------------
# Server-side helpers: temporary functions, gone when the fill ends
# --------------------------------------------------------------------------

_HELPERS = sql.SQL(
    r"""
-- The seed, set transaction-locally by fill_shared_source.
CREATE FUNCTION pg_temp.seed() RETURNS bigint LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.current_setting('hexabuilders_sample.seed')::bigint $$;

-- A pseudo-random bigint for (key, n).
CREATE FUNCTION pg_temp.h(key text, n bigint) RETURNS bigint LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.hashtextextended(key || ':' || n::text, pg_temp.seed()) $$;

-- A pseudo-random double in [0, 1) for (key, n).
CREATE FUNCTION pg_temp.rnd(key text, n bigint) RETURNS double precision LANGUAGE sql STABLE
AS $$ SELECT ((pg_temp.h(key, n) >> 11) & 9007199254740991)::double precision / 9007199254740992::double precision $$;

-- A pseudo-random integer in [1, k].
CREATE FUNCTION pg_temp.pick(key text, n bigint, k integer) RETURNS integer LANGUAGE sql STABLE
AS $$ SELECT 1 + pg_catalog.floor(pg_temp.rnd(key, n) * k)::integer $$;

-- A pseudo-random element of options.
CREATE FUNCTION pg_temp.choose(options anyarray, key text, n bigint) RETURNS anyelement LANGUAGE sql STABLE
AS $$ SELECT options[pg_temp.pick(key, n, pg_catalog.cardinality(options))] $$;

-- 0 to max_count pseudo-random elements of options (duplicates possible).
CREATE FUNCTION pg_temp.some(options text[], key text, n bigint, max_count integer) RETURNS text[] LANGUAGE sql STABLE
AS $$ SELECT ARRAY(SELECT pg_temp.choose(options, key, n * 16 + g)
                   FROM pg_catalog.generate_series(1, pg_temp.pick(key || '.count', n, max_count + 1) - 1) AS g
                   ORDER BY g) $$;

-- `count` pseudo-random decimal digits (count <= 18).
CREATE FUNCTION pg_temp.digits(key text, n bigint, count integer) RETURNS text LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.right(pg_catalog.lpad(pg_catalog.abs(mod(pg_temp.h(key, n), 1000000000000000000))::text, 18, '0'), count) $$;

-- A stable uuid for the n-th row of a kind ("partner", "process", ...).
CREATE FUNCTION pg_temp.uid(kind text, n bigint) RETURNS uuid LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.md5(pg_temp.seed()::text || ':' || kind || ':' || n::text)::uuid $$;

-- A wall-clock time in [low, low + span_days) read in a pseudo-random time zone
-- (with and without DST; times in a DST gap are shifted as PostgreSQL does).
CREATE FUNCTION pg_temp.moment(key text, n bigint, low timestamp, span_days double precision)
RETURNS timestamptz LANGUAGE sql STABLE
AS $$ SELECT (low + pg_catalog.make_interval(secs => pg_temp.rnd(key, n) * span_days * 86400))
             AT TIME ZONE pg_temp.choose(ARRAY[
                 'UTC', 'America/Bogota', 'America/Mexico_City', 'Europe/Madrid', 'Europe/Berlin',
                 'America/Sao_Paulo', 'Asia/Tokyo', 'Asia/Shanghai', 'Asia/Seoul', 'America/New_York',
                 'America/Phoenix', 'Asia/Kolkata', 'Asia/Kathmandu', 'Africa/Cairo', 'Australia/Lord_Howe',
                 'America/St_Johns', 'Atlantic/Reykjavik', 'Pacific/Auckland', 'Pacific/Chatham',
                 'Europe/Istanbul'], key || '.tz', n) $$;

-- A duration of `seconds` as an interval without a days part (so adding it to a
-- timestamptz does not depend on the session's TimeZone).
CREATE FUNCTION pg_temp.secs(seconds double precision) RETURNS interval LANGUAGE sql IMMUTABLE
AS $$ SELECT pg_catalog.make_interval(secs => seconds) $$;

-- `len` pseudo-random (incompressible) bytes, 64 per sha512 call.
CREATE FUNCTION pg_temp.random_bytes(key text, n bigint, len integer) RETURNS bytea LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.substring(
                 COALESCE(pg_catalog.string_agg(
                     pg_catalog.sha512(pg_catalog.convert_to(
                         pg_temp.seed()::text || ':' || key || ':' || n::text || ':' || g::text, 'UTF8')),
                     '\x'::bytea ORDER BY g), '\x'::bytea),
                 1, len)
      FROM pg_catalog.generate_series(1, (len + 63) / 64) AS g $$;

-- Compressible filler bytes: a 16-byte pseudo-random pattern repeated `times` times.
CREATE FUNCTION pg_temp.pattern_bytes(key text, n bigint, times integer) RETURNS bytea LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.decode(pg_catalog.repeat(pg_catalog.md5(pg_temp.h(key, n)::text), times), 'hex') $$;
"""
)

_HELPER_SIGNATURES = [
    "seed()", "h(text, bigint)", "rnd(text, bigint)", "pick(text, bigint, integer)",
    "choose(anyarray, text, bigint)", "some(text[], text, bigint, integer)", "digits(text, bigint, integer)",
    "uid(text, bigint)", "moment(text, bigint, timestamp, double precision)", "secs(double precision)",
    "random_bytes(text, bigint, integer)", "pattern_bytes(text, bigint, integer)",
]
_DROP_HELPERS = sql.SQL("DROP FUNCTION ") + sql.SQL(", ").join(
    sql.SQL("pg_temp.") + sql.SQL(signature) for signature in _HELPER_SIGNATURES
)

# --------------------------------------------------------------------------
# Partner Management (schema public)
# --------------------------------------------------------------------------

_PARTNERS = r"""
INSERT INTO public.partners (
    id, legal_name, display_name, partner_type, status, email, phone, country_code, tax_id,
    website, skills, rating, annual_revenue, founded_on, is_verified, profile, logo, notes,
    created_at, updated_at, deleted_at)
SELECT
    pg_temp.uid('partner', i),
    r.company || ' ' || pg_temp.choose(%(company_suffixes)s::text[], 'p.suffix', i),
    CASE WHEN mod(i, 8) = 3 THEN NULL ELSE r.company END,
    pg_temp.choose(ARRAY['individual', 'company', 'company', 'startup', 'agency'], 'p.type', i),
    r.status,
    'partner' || i || '@' || pg_temp.choose(%(email_domains)s::text[], 'p.domain', i),
    CASE WHEN mod(i, 6) = 2 THEN NULL ELSE '+' || pg_temp.pick('p.cc', i, 98) || ' ' || pg_temp.digits('p.phone', i, 10) END,
    (%(countries)s::text[])[r.place],
    CASE WHEN mod(i, 6) = 1 THEN NULL ELSE 'TAX-' || pg_temp.digits('p.tax', i, 9) || '-' || pg_temp.pick('p.dv', i, 9) END,
    CASE WHEN mod(i, 5) = 2 THEN NULL ELSE 'https://partner' || i || '.' || pg_temp.choose(%(email_domains)s::text[], 'p.web', i) || '/' END,
    CASE mod(i, 9)
        WHEN 0 THEN '{}'::text[]
        WHEN 4 THEN NULL
        WHEN 7 THEN ARRAY['BIM', NULL, 'Revit']
        ELSE pg_temp.some(%(skills)s::text[], 'p.skills', i, 4)
    END,
    CASE WHEN mod(i, 7) = 5 THEN NULL ELSE round((pg_temp.rnd('p.rating', i) * 5)::numeric, 2) END,
    CASE WHEN mod(i, 10) = 6 THEN NULL
         ELSE abs(mod(pg_temp.h('p.revenue', i), 1000000000000000000))::numeric / 1000000 END,
    CASE WHEN mod(i, 6) = 4 THEN NULL ELSE DATE '1890-01-01' + pg_temp.pick('p.founded', i, 49000) END,
    pg_temp.rnd('p.verified', i) < 0.6,
    CASE
        WHEN mod(i, 25000) = 1 THEN (  -- ~1 MB of jsonb
            SELECT jsonb_build_object('visits', jsonb_agg(jsonb_build_object(
                       'seq', g, 'site', 'Obra ' || g || ' — inspección ✓ 検査', 'ok', mod(g, 3) <> 0,
                       'crew', jsonb_build_array('José', 'Zoë', NULL, g * 1.5)) ORDER BY g))
            FROM generate_series(1, 9000) AS g)
        WHEN mod(i, 50) = 13 THEN '{}'::jsonb
        WHEN mod(i, 50) = 17 THEN 'null'::jsonb
        WHEN mod(i, 50) = 23 THEN '[]'::jsonb
        ELSE jsonb_build_object(
            'industry', pg_temp.choose(ARRAY['construction', 'software', 'consulting', 'logistics'], 'p.industry', i),
            'employees', pg_temp.pick('p.employees', i, 5000),
            'languages', to_jsonb(pg_temp.some(ARRAY['es', 'en', 'pt', 'de', 'ja'], 'p.lang', i, 3)),
            'social', jsonb_build_object('linkedin', CASE WHEN mod(i, 2) = 0 THEN 'https://linkedin.example/' || i END),
            'score', round(pg_temp.rnd('p.score', i)::numeric, 6),
            'big_number', 123456789012345678901234567890.123456789,
            'ünïcödé ключ', '漢字 ✓ 🚀')
    END,
    CASE WHEN mod(i, 3) = 0
         THEN '\x89504e470d0a1a0a'::bytea || pg_temp.random_bytes('p.logo', i, 64 + pg_temp.pick('p.logo_size', i, 1500)) END,
    -- every edge-case note appears once the table has a few dozen rows
    CASE WHEN mod(i, 4) = 1 THEN NULL ELSE (%(notes)s::text[])[1 + mod(i, cardinality(%(notes)s::text[]))] END,
    r.created_at,
    r.created_at,  -- as inserted; _EDITS stamps the rows changed since
    CASE WHEN r.status = 'terminated' THEN r.created_at + pg_temp.secs(pg_temp.rnd('p.deleted', i) * 800 * 86400) END
FROM generate_series(1, %(partners)s::integer) AS i
CROSS JOIN LATERAL (
    SELECT pg_temp.choose(%(company_names)s::text[], 'p.company', i) AS company,
           CASE WHEN mod(i, 20) = 9 THEN 'terminated'::public.partner_status
                ELSE pg_temp.choose(ARRAY['active', 'active', 'active', 'prospect', 'suspended',
                                          'terminated']::public.partner_status[], 'p.status', i) END AS status,
           pg_temp.pick('p.place', i, cardinality(%(countries)s::text[])) AS place,
           pg_temp.moment('p.created', i, '2019-01-01', 5 * 365) AS created_at
) AS r
"""

_PARTNER_CONTACTS = r"""
INSERT INTO public.partner_contacts (
    id, partner_id, full_name, email, phone, job_title, is_primary, preferred_language, created_at)
SELECT
    n,
    pg_temp.uid('partner', i),
    pg_temp.choose(%(first_names)s::text[], 'c.first', n) || ' ' || pg_temp.choose(%(last_names)s::text[], 'c.last', n),
    CASE WHEN mod(n, 9) = 4 THEN NULL ELSE 'contact' || n || '@' || pg_temp.choose(%(email_domains)s::text[], 'c.domain', n) END,
    CASE WHEN mod(n, 5) = 3 THEN NULL ELSE '+' || pg_temp.pick('c.cc', n, 98) || ' ' || pg_temp.digits('c.phone', n, 10) END,
    CASE WHEN mod(n, 7) = 6 THEN NULL ELSE pg_temp.choose(%(job_titles)s::text[], 'c.title', n) END,
    c = 1 AND mod(i, 13) <> 5,
    CASE WHEN mod(n, 6) = 5 THEN NULL
         ELSE pg_temp.choose(ARRAY['es', 'en', 'pt-BR', 'de', 'fr', 'ja', 'zh-Hans', 'ko', 'ar'], 'c.lang', n) END,
    pg_temp.moment('c.created', n, '2019-01-01', 5 * 365)
FROM generate_series(1, %(partners)s::integer) AS i
CROSS JOIN generate_series(1, 3) AS c
CROSS JOIN LATERAL (SELECT (i::bigint - 1) * 3 + c AS n) AS k
"""

_PARTNER_ADDRESSES = r"""
INSERT INTO public.partner_addresses (
    id, partner_id, kind, line1, line2, city, region, postal_code, country_code,
    latitude, longitude, valid_from, valid_to)
SELECT
    n,
    pg_temp.uid('partner', i),
    CASE WHEN a = 1 THEN 'headquarters' ELSE pg_temp.choose(ARRAY['billing', 'site'], 'a.kind', n) END,
    pg_temp.choose(%(streets)s::text[], 'a.street', n) || ' # ' || pg_temp.pick('a.number', n, 250) || '-' || pg_temp.pick('a.sub', n, 99),
    CASE WHEN mod(n, 3) = 0 THEN NULL
         ELSE pg_temp.choose(ARRAY['Oficina 301', 'Piso 2', 'Bodega 7', '3F 北棟', 'Apt. 4ºB', 'Suite #12'], 'a.line2', n) END,
    (%(cities)s::text[])[p.k],
    CASE WHEN mod(n, 13) = 6 THEN NULL ELSE (%(regions)s::text[])[p.k] END,
    CASE WHEN mod(n, 11) = 5 THEN NULL ELSE (%(postal_codes)s::text[])[p.k] END,
    (%(countries)s::text[])[p.k],
    CASE WHEN mod(n, 10) = 4 THEN NULL ELSE round((pg_temp.rnd('a.lat', n) * 180 - 90)::numeric, 6) END,
    CASE WHEN mod(n, 10) = 4 THEN NULL ELSE round((pg_temp.rnd('a.lon', n) * 360 - 180)::numeric, 6) END,
    DATE '2015-01-01' + pg_temp.pick('a.from', n, 3000),
    CASE WHEN mod(n, 4) = 2 THEN DATE '2023-03-21' + pg_temp.pick('a.to', n, 1000) END
FROM (
    SELECT i, a, row_number() OVER (ORDER BY i, a) AS n
    FROM generate_series(1, %(partners)s::integer) AS i
    CROSS JOIN LATERAL generate_series(1, 1 + (pg_temp.rnd('a.count', i) < 0.35)::integer) AS a
) AS s
CROSS JOIN LATERAL (SELECT pg_temp.pick('a.place', n, cardinality(%(cities)s::text[])) AS k) AS p
"""

_PARTNER_CONTRACTS = r"""
INSERT INTO public.partner_contracts (
    id, partner_id, contract_number, title, status, value, currency, starts_on, ends_on,
    auto_renew, signed_at, terms, document, created_at)
SELECT
    pg_temp.uid('contract', n),
    pg_temp.uid('partner', i),
    'HB-' || lpad(i::text, 8, '0') || '-' || c,
    pg_temp.choose(%(contract_titles)s::text[], 'k.title', n),
    r.status,
    CASE WHEN mod(n, 8) = 1 THEN NULL ELSE abs(mod(pg_temp.h('k.value', n), 10000000000000))::numeric / 100 END,
    pg_temp.choose(ARRAY['USD', 'EUR', 'COP', 'MXN', 'BRL', 'JPY'], 'k.currency', n),
    r.starts_on,
    CASE WHEN mod(n, 5) = 0 THEN NULL ELSE r.starts_on + 365 * pg_temp.pick('k.years', n, 3) END,
    pg_temp.rnd('k.renew', n) < 0.3,
    CASE WHEN r.status IN ('draft', 'sent') THEN NULL
         ELSE pg_temp.moment('k.signed', n, (r.starts_on - 20)::timestamp, 15) END,
    CASE WHEN mod(n, 6) = 2 THEN NULL
         ELSE jsonb_build_object(
             'payment_days', 15 * pg_temp.pick('k.payment', n, 4),
             'penalty_pct', round((pg_temp.rnd('k.penalty', n) * 10)::numeric, 2),
             'jurisdiction', pg_temp.choose(ARRAY['Bogotá D.C.', 'Madrid', 'São Paulo', '東京地方裁判所'], 'k.court', n),
             'clauses', jsonb_build_array('confidencialidad', 'no competencia', '知的財産', NULL)) END,
    CASE WHEN r.status = 'draft' OR mod(n, 9) = 4 THEN NULL  -- not scanned yet
         ELSE '\x255044462d312e370a'::bytea || pg_temp.pattern_bytes('k.doc', n, 8 + pg_temp.pick('k.doc_size', n, 56)) END,
    pg_temp.moment('k.created', n, (r.starts_on - 30)::timestamp, 25)
FROM (
    SELECT i, c, row_number() OVER (ORDER BY i, c) AS n
    FROM generate_series(1, %(partners)s::integer) AS i
    CROSS JOIN LATERAL generate_series(1, pg_temp.pick('k.count', i, 4) - 1) AS c
) AS s
CROSS JOIN LATERAL (
    SELECT pg_temp.choose(ARRAY['draft', 'sent', 'signed', 'signed', 'signed', 'expired', 'cancelled']::public.contract_status[],
                          'k.status', n) AS status,
           DATE '2016-01-01' + pg_temp.pick('k.start', n, 3200) AS starts_on
) AS r
"""

_PARTNER_TAGS = r"""
INSERT INTO public.partner_tags (id, name, color, description, created_at)
SELECT t,
       (%(tag_names)s::text[])[t],
       (%(tag_colors)s::text[])[t],
       (%(tag_descriptions)s::text[])[t],
       pg_temp.moment('t.created', t, '2018-06-01', 200)
FROM generate_series(1, %(tags)s::integer) AS t
"""

_PARTNER_TAG_ASSIGNMENTS = r"""
INSERT INTO public.partner_tag_assignments (partner_id, tag_id, assigned_by, assigned_at)
SELECT
    pg_temp.uid('partner', i),
    t,
    CASE WHEN mod(i + t, 5) = 0 THEN NULL ELSE pg_temp.choose(%(first_names)s::text[], 'ta.by', n) END,
    pg_temp.moment('ta.at', n, '2019-06-01', 4 * 365)
FROM generate_series(1, %(partners)s::integer) AS i
CROSS JOIN generate_series(1, %(tags)s::integer) AS t
CROSS JOIN LATERAL (SELECT i::bigint * 100 + t AS n) AS k
WHERE pg_temp.rnd('ta.pick', n) < 2.2 / %(tags)s::integer
"""

# --------------------------------------------------------------------------
# Onboarding (schema onboarding)
# --------------------------------------------------------------------------

_ONBOARDING_PROCESSES = r"""
INSERT INTO onboarding.onboarding_processes (
    id, partner_id, status, assigned_to, priority, due_date, started_at, completed_at,
    checklist, notes, created_at, updated_at)
SELECT
    pg_temp.uid('process', n),
    pg_temp.uid('partner', i),  -- a partner that exists in public.partners
    r.status,
    CASE WHEN r.status = 'pending' OR mod(n, 7) = 2 THEN NULL
         ELSE pg_temp.choose(%(first_names)s::text[], 'o.owner', n) || ' ' || pg_temp.choose(%(last_names)s::text[], 'o.owner2', n) END,
    pg_temp.pick('o.priority', n, 5),
    CASE WHEN mod(n, 5) = 1 THEN NULL ELSE (r.created_at AT TIME ZONE 'UTC')::date + 30 + pg_temp.pick('o.due', n, 60) END,
    t.started_at,
    CASE WHEN r.status = 'completed' THEN t.started_at + pg_temp.secs(pg_temp.rnd('o.done', n) * 45 * 86400) END,
    CASE WHEN mod(n, 11) = 4 THEN '{}'::jsonb
         ELSE jsonb_build_object(
             'kyc', r.status <> 'pending',
             'contract_signed', pg_temp.rnd('o.signed', n) < 0.7,
             'training', jsonb_build_object(
                 'modules', jsonb_build_array('Seguridad', 'Calidad ✓', '安全'),
                 'score', round((pg_temp.rnd('o.score', n) * 100)::numeric, 1)),
             'bank_account', CASE WHEN mod(n, 3) = 0 THEN NULL ELSE '****' || pg_temp.digits('o.bank', n, 4) END) END,
    CASE WHEN mod(n, 3) <> 0 THEN NULL ELSE pg_temp.choose(%(notes)s::text[], 'o.notes', n) END,
    r.created_at,
    r.created_at  -- as inserted; _EDITS stamps the rows changed since
FROM (
    SELECT i, j, row_number() OVER (ORDER BY i, j) AS n
    FROM generate_series(1, %(partners)s::integer) AS i
    CROSS JOIN LATERAL (SELECT pg_temp.rnd('o.count', i) AS x) AS q
    -- ~8%% of partners have no process yet, ~7%% were onboarded twice
    CROSS JOIN LATERAL generate_series(1, CASE WHEN q.x < 0.08 THEN 0 WHEN q.x < 0.93 THEN 1 ELSE 2 END) AS j
) AS s
CROSS JOIN LATERAL (
    SELECT CASE WHEN mod(n, 15) = 7 THEN 'pending'::onboarding.process_status
                ELSE pg_temp.choose(ARRAY['completed', 'completed', 'completed', 'completed', 'in_progress', 'in_progress',
                                          'pending', 'blocked', 'cancelled']::onboarding.process_status[], 'o.status', n) END
               AS status,
           pg_temp.moment('o.created', n, '2019-03-01', 5 * 365) AS created_at
) AS r
CROSS JOIN LATERAL (
    SELECT CASE WHEN r.status = 'pending' THEN NULL
                ELSE r.created_at + pg_temp.secs(pg_temp.rnd('o.start', n) * 5 * 86400) END AS started_at
) AS t
"""

_ONBOARDING_STEPS = r"""
INSERT INTO onboarding.onboarding_steps (
    id, process_id, position, name, status, is_mandatory, started_at, completed_at, payload)
OVERRIDING SYSTEM VALUE
SELECT
    n,
    s.process_id,
    s.pos,
    (%(step_names)s::text[])[s.pos],
    st.status,
    s.pos <> 4,
    t.started_at,
    CASE WHEN st.status = 'done' THEN t.started_at + pg_temp.secs(pg_temp.rnd('s.took', n) * 3 * 86400) END,
    CASE WHEN st.status IN ('todo', 'skipped') OR mod(n, 6) = 1 THEN NULL
         ELSE jsonb_build_object('form_version', pg_temp.pick('s.form', n, 3),
                                 'answers', jsonb_build_object('acepta_términos', true, 'comentario', 'Revisión OK ✓'),
                                 'attempts', pg_temp.pick('s.attempts', n, 3)) END
FROM (
    SELECT p.id AS process_id, p.status AS process_status, p.started_at AS process_started, pos,
           pg_temp.pick('s.current:' || p.id::text, 0, 5) AS current_pos,
           row_number() OVER (ORDER BY p.id, pos) AS n
    FROM onboarding.onboarding_processes AS p
    CROSS JOIN generate_series(1, 5) AS pos
) AS s
CROSS JOIN LATERAL (
    SELECT (CASE s.process_status
                WHEN 'completed' THEN CASE WHEN s.pos = 4 AND pg_temp.rnd('s.skip', n) < 0.2 THEN 'skipped' ELSE 'done' END
                WHEN 'cancelled' THEN CASE WHEN s.pos <= 2 THEN 'done' ELSE 'skipped' END
                WHEN 'pending' THEN 'todo'
                ELSE CASE WHEN s.pos < s.current_pos THEN 'done' WHEN s.pos = s.current_pos THEN 'doing' ELSE 'todo' END
            END)::onboarding.step_status AS status
) AS st
CROSS JOIN LATERAL (
    SELECT CASE WHEN st.status IN ('done', 'doing')
                THEN s.process_started + pg_temp.secs((s.pos - 1) * 86400 + pg_temp.rnd('s.start', n) * 86400) END AS started_at
) AS t
"""

_DOCUMENTS = r"""
INSERT INTO onboarding.documents (
    id, process_id, step_id, document_type, file_name, mime_type, size_bytes, content, labels,
    verified, verified_by, expires_on, uploaded_at)
SELECT
    n,
    s.process_id,
    CASE WHEN mod(n, 10) = 7 THEN NULL ELSE s.step_id END,  -- attached to the process only
    (%(document_types)s::text[])[d.k],
    (%(file_names)s::text[])[d.k],
    (%(mime_types)s::text[])[d.k],
    length(c.content),
    c.content,
    CASE mod(n, 7)
        WHEN 0 THEN '{}'::text[]
        WHEN 3 THEN ARRAY['kyc', NULL, 'revisión']
        ELSE ARRAY[pg_temp.choose(ARRAY['kyc', 'legal', 'finanzas', '重要', 'escaneado'], 'd.label', n)]
    END,
    v.verified,
    CASE WHEN v.verified THEN pg_temp.choose(%(first_names)s::text[], 'd.verifier', n) END,
    CASE WHEN mod(n, 3) = 0 THEN (s.step_time AT TIME ZONE 'UTC')::date + 365 * pg_temp.pick('d.expires', n, 10) END,
    s.step_time + pg_temp.secs(pg_temp.rnd('d.uploaded', n) * 3600)
FROM (
    SELECT st.id AS step_id, st.process_id, st.started_at AS step_time, dn,
           row_number() OVER (ORDER BY st.id, dn) AS n
    FROM onboarding.onboarding_steps AS st
    CROSS JOIN LATERAL generate_series(1, pg_temp.pick('d.count', st.id, 2)) AS dn
    WHERE st.position IN (2, 3) AND st.status IN ('done', 'doing')
) AS s
CROSS JOIN LATERAL (SELECT pg_temp.pick('d.kind', n, cardinality(%(document_types)s::text[])) AS k) AS d
CROSS JOIN LATERAL (
    SELECT CASE
               WHEN mod(n, 10000) = 1 THEN pg_temp.random_bytes('d.big', n, 1048576)  -- ~1 MB scan
               WHEN mod(n, 25) = 3 THEN '\x'::bytea                                     -- empty upload
               ELSE '\x255044462d312e370a'::bytea || pg_temp.pattern_bytes('d.content', n, pg_temp.pick('d.size', n, 48))
           END AS content
) AS c
CROSS JOIN LATERAL (
    SELECT CASE WHEN mod(n, 4) = 0 THEN NULL ELSE pg_temp.rnd('d.verified', n) < 0.8 END AS verified
) AS v
"""

_PROCESS_EVENTS = r"""
INSERT INTO onboarding.process_events (id, process_id, event_type, actor, data, occurred_at)
SELECT
    n,
    s.process_id,
    CASE WHEN s.e = 1 THEN 'created'
         ELSE pg_temp.choose(ARRAY['step_completed', 'document_uploaded', 'comment', 'status_changed'], 'e.type', n) END,
    CASE WHEN mod(n, 4) = 0 THEN NULL  -- the system
         ELSE pg_temp.choose(%(first_names)s::text[], 'e.actor', n) END,
    CASE mod(n, 5)
        WHEN 2 THEN NULL
        WHEN 4 THEN '"texto libre — ✓"'::jsonb
        ELSE jsonb_build_object('seq', s.e, 'ip', '10.' || pg_temp.pick('e.ip', n, 254) || '.0.1',
                                'changes', jsonb_build_array(1, NULL, 'x', jsonb_build_object('campo', 'estado')))
    END,
    s.created_at + pg_temp.secs(s.e * 3600 * pg_temp.pick('e.gap', n, 48))
FROM (
    SELECT p.id AS process_id, p.created_at, e, row_number() OVER (ORDER BY p.id, e) AS n
    FROM onboarding.onboarding_processes AS p
    CROSS JOIN LATERAL generate_series(1, 1 + pg_temp.pick('e.count:' || p.id::text, 0, 5)) AS e
) AS s
"""

# --------------------------------------------------------------------------
# Recruitment (schema recruitment)
# --------------------------------------------------------------------------

_JOB_POSTINGS = r"""
INSERT INTO recruitment.job_postings (
    id, partner_id, title, description, location, is_remote, salary_min, salary_max, currency,
    skills, is_open, published_at, closes_on, metadata, created_at, updated_at)
SELECT
    k,
    pg_temp.uid('partner', pg_temp.pick('j.partner', k, %(partners)s::integer)),  -- the hiring partner
    pg_temp.choose(%(job_posting_titles)s::text[], 'j.title', k),
    CASE WHEN mod(k, 6) = 1 THEN NULL
         ELSE 'Buscamos ' || pg_temp.choose(%(job_posting_titles)s::text[], 'j.title', k) || E'.\n\n'
              || E'Requisitos:\n- 3+ años de experiencia\n- Inglés B2 🇬🇧\n\tBeneficios: ' || '¥€$ bonos' END,
    CASE WHEN r.remote AND mod(k, 2) = 0 THEN NULL ELSE pg_temp.choose(%(cities)s::text[], 'j.city', k) END,
    r.remote,
    CASE WHEN mod(k, 5) = 2 THEN NULL ELSE r.salary_min END,
    CASE WHEN mod(k, 7) = 3 THEN NULL ELSE r.salary_min + 100 * pg_temp.pick('j.range', k, 80) END,
    pg_temp.choose(ARRAY['USD', 'EUR', 'COP', 'MXN', 'BRL', 'JPY'], 'j.currency', k),
    CASE mod(k, 8)
        WHEN 0 THEN '{}'::text[]
        WHEN 5 THEN ARRAY['SQL', NULL]
        ELSE pg_temp.some(%(skills)s::text[], 'j.skills', k, 5)
    END,
    r.is_open,
    CASE WHEN mod(k, 9) = 4 THEN NULL ELSE r.created_at + pg_temp.secs(pg_temp.rnd('j.published', k) * 7 * 86400) END,
    CASE WHEN mod(k, 4) = 3 THEN NULL ELSE (r.created_at AT TIME ZONE 'UTC')::date + 15 + pg_temp.pick('j.closes', k, 60) END,
    CASE WHEN mod(k, 5) = 4 THEN NULL
         ELSE jsonb_build_object('source', pg_temp.choose(ARRAY['portal', 'referido', 'LinkedIn', '求人サイト'], 'j.source', k),
                                 'vacancies', pg_temp.pick('j.vacancies', k, 5),
                                 'benefits', jsonb_build_array('seguro médico', 'bono 🎁', NULL)) END,
    r.created_at,
    r.created_at  -- as inserted; _EDITS stamps the rows changed since
FROM generate_series(1, %(job_postings)s::integer) AS k
CROSS JOIN LATERAL (
    SELECT mod(k, 6) = 4 OR pg_temp.rnd('j.remote', k) < 0.25 AS remote,
           pg_temp.rnd('j.open', k) < 0.6 AS is_open,
           (800 + 100 * pg_temp.pick('j.salary', k, 200))::numeric(12, 2) AS salary_min,
           pg_temp.moment('j.created', k, '2021-01-01', 4 * 365) AS created_at
) AS r
"""

_CANDIDATES = r"""
INSERT INTO recruitment.candidates (
    id, referred_by_partner_id, full_name, email, phone, country_code, birth_date, years_experience,
    skills, resume, profile, open_to_relocation, created_at, updated_at)
SELECT
    pg_temp.uid('candidate', k),
    CASE WHEN mod(k, 10) = 2 THEN NULL
         WHEN mod(k, 10) = 1 OR pg_temp.rnd('cd.referred', k) < 0.25
         THEN pg_temp.uid('partner', pg_temp.pick('cd.partner', k, %(partners)s::integer)) END,
    pg_temp.choose(%(first_names)s::text[], 'cd.first', k) || ' ' || pg_temp.choose(%(last_names)s::text[], 'cd.last', k),
    'candidate' || k || '@' || pg_temp.choose(%(email_domains)s::text[], 'cd.domain', k),
    CASE WHEN mod(k, 4) = 2 THEN NULL ELSE '+' || pg_temp.pick('cd.cc', k, 98) || ' ' || pg_temp.digits('cd.phone', k, 9) END,
    CASE WHEN mod(k, 6) = 5 THEN NULL ELSE pg_temp.choose(%(countries)s::text[], 'cd.country', k) END,
    CASE WHEN mod(k, 5) = 3 THEN NULL ELSE DATE '1960-01-01' + pg_temp.pick('cd.birth', k, 15000) END,
    CASE WHEN mod(k, 7) = 1 THEN NULL ELSE round((pg_temp.rnd('cd.years', k) * 40)::numeric, 1) END,
    CASE mod(k, 9)
        WHEN 1 THEN NULL
        WHEN 2 THEN '{}'::text[]
        WHEN 6 THEN ARRAY[NULL, 'Python', NULL]
        ELSE pg_temp.some(%(skills)s::text[], 'cd.skills', k, 6)
    END,
    CASE WHEN mod(k, 3) <> 0 THEN NULL
         ELSE '\x255044462d312e370a'::bytea || pg_temp.pattern_bytes('cd.resume', k, 16 + pg_temp.pick('cd.resume_size', k, 48)) END,
    CASE WHEN mod(k, 12) = 7 THEN '{}'::jsonb
         ELSE jsonb_build_object('headline', pg_temp.choose(%(job_posting_titles)s::text[], 'cd.headline', k),
                                 'links', jsonb_build_array('https://github.example/' || k),
                                 'salary_expectation', jsonb_build_object('amount', 1000 * pg_temp.pick('cd.salary', k, 20),
                                                                          'currency', 'USD'),
                                 'remote_only', CASE WHEN mod(k, 2) = 0 THEN NULL ELSE mod(k, 4) = 1 END) END,
    CASE mod(k, 3) WHEN 0 THEN NULL WHEN 1 THEN true ELSE false END,
    r.created_at,
    r.created_at  -- as inserted; _EDITS stamps the rows changed since
FROM generate_series(1, %(candidates)s::integer) AS k
CROSS JOIN LATERAL (SELECT pg_temp.moment('cd.created', k, '2020-06-01', 4 * 365) AS created_at) AS r
"""

_APPLICATIONS = r"""
INSERT INTO recruitment.applications (
    id, job_posting_id, candidate_id, status, cover_letter, expected_salary, score, answers,
    applied_at, decided_at)
SELECT
    n,
    1 + mod(s.first_job - 1 + s.a - 1, %(job_postings)s::integer),  -- distinct postings per candidate
    pg_temp.uid('candidate', s.k),
    r.status,
    CASE WHEN mod(n, 50000) = 1 THEN repeat(%(long_paragraph)s::text, 5000)  -- ~1 MB of text
         WHEN mod(n, 3) = 0 THEN NULL
         ELSE pg_temp.choose(%(cover_letters)s::text[], 'ap.letter', n) END,
    CASE WHEN mod(n, 4) = 1 THEN NULL ELSE (1000 + 50 * pg_temp.pick('ap.salary', n, 200))::numeric(12, 2) END,
    CASE WHEN r.status = 'applied' THEN NULL ELSE round((pg_temp.rnd('ap.score', n) * 100)::numeric, 2) END,
    CASE WHEN mod(n, 5) = 2 THEN NULL
         ELSE jsonb_build_object('¿Disponibilidad inmediata?', pg_temp.rnd('ap.available', n) < 0.5,
                                 'años_en_bim', pg_temp.pick('ap.bim', n, 15),
                                 'idiomas', jsonb_build_array('es', 'en', NULL)) END,
    r.applied_at,
    CASE WHEN r.status IN ('hired', 'rejected', 'withdrawn')
         THEN r.applied_at + pg_temp.secs(pg_temp.rnd('ap.decided', n) * 60 * 86400) END
FROM (
    SELECT k, a, pg_temp.pick('ap.job', k, %(job_postings)s::integer) AS first_job,
           row_number() OVER (ORDER BY k, a) AS n
    FROM generate_series(1, %(candidates)s::integer) AS k
    CROSS JOIN LATERAL generate_series(1, pg_temp.pick('ap.count', k, 4) - 1) AS a
) AS s
CROSS JOIN LATERAL (
    SELECT pg_temp.choose(ARRAY['applied', 'applied', 'screening', 'interview', 'interview', 'offer', 'hired',
                                'rejected', 'rejected', 'withdrawn']::recruitment.application_status[], 'ap.status', n) AS status,
           pg_temp.moment('ap.applied', n, '2021-02-01', 4 * 365) AS applied_at
) AS r
"""

_INTERVIEWS = r"""
INSERT INTO recruitment.interviews (
    id, application_id, round, mode, scheduled_at, duration, interviewer, rating, passed, feedback)
OVERRIDING SYSTEM VALUE
SELECT
    n,
    s.application_id,
    s.r,
    pg_temp.choose(ARRAY['onsite', 'video', 'video', 'phone'], 'i.mode', n),
    s.applied_at + pg_temp.secs(s.r * 3 * 86400 + pg_temp.rnd('i.when', n) * 86400),
    CASE WHEN mod(n, 6) = 5 THEN NULL
         WHEN mod(n, 50) = 7 THEN INTERVAL '1 day 2 hours 3.5 seconds'
         ELSE make_interval(mins => 15 * pg_temp.pick('i.duration', n, 6)) END,
    CASE WHEN mod(n, 7) = 3 THEN NULL
         ELSE pg_temp.choose(%(first_names)s::text[], 'i.who', n) || ' ' || pg_temp.choose(%(last_names)s::text[], 'i.who2', n) END,
    g.rating,
    CASE WHEN g.rating IS NULL THEN NULL ELSE g.rating >= 3 END,
    CASE WHEN mod(n, 3) = 1 THEN NULL ELSE pg_temp.choose(%(notes)s::text[], 'i.feedback', n) END
FROM (
    SELECT a.id AS application_id, a.applied_at, r, row_number() OVER (ORDER BY a.id, r) AS n
    FROM recruitment.applications AS a
    CROSS JOIN LATERAL generate_series(1, pg_temp.pick('i.rounds', a.id, 3)) AS r
    WHERE a.status IN ('interview', 'offer', 'hired', 'rejected')
) AS s
CROSS JOIN LATERAL (
    SELECT CASE WHEN mod(n, 5) = 4 THEN NULL ELSE pg_temp.pick('i.rating', n, 5) END AS rating
) AS g
"""

# A recruiter's notes on the candidates of screened applications, under
# row-level security on the source: written here as the table's owner, who
# sees (and writes) every note.
_CANDIDATE_NOTES = r"""
INSERT INTO recruitment.candidate_notes (
    id, candidate_id, application_id, recruiter, visibility, body, pinned, created_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT
    n,
    s.candidate_id,
    CASE WHEN mod(n, 5) = 3 THEN NULL ELSE s.application_id END,  -- about the candidate, not one application
    pg_temp.choose(%(recruiters)s::text[], 'cn.recruiter', n),
    CASE WHEN pg_temp.rnd('cn.team', n) < 0.4 THEN 'team' ELSE 'private' END,
    CASE WHEN mod(n, 9) = 2 THEN pg_temp.choose(%(notes)s::text[], 'cn.edge', n)  -- the edge-case texts
         ELSE pg_temp.choose(%(recruiter_notes)s::text[], 'cn.body', n) END,
    false,  -- _EDITS pins some
    r.created_at,
    r.created_at
FROM (
    SELECT a.candidate_id, a.id AS application_id, a.applied_at, k,
           row_number() OVER (ORDER BY a.id, k) AS n
    FROM recruitment.applications AS a
    CROSS JOIN LATERAL generate_series(1, pg_temp.pick('cn.count', a.id, 4) - 1) AS k
    WHERE a.status <> 'applied'
) AS s
CROSS JOIN LATERAL (
    SELECT s.applied_at + pg_temp.secs((s.k * 2 + pg_temp.rnd('cn.at', n)) * 86400) AS created_at
) AS r
"""

# --------------------------------------------------------------------------
# Campaign Management (schema campaign_management)
# --------------------------------------------------------------------------

_CAMPAIGNS = r"""
INSERT INTO campaign_management.campaigns (
    id, name, description, status, channel, budget, currency, starts_on, ends_on, keywords,
    target_audience, created_by, created_at, updated_at)
SELECT
    pg_temp.uid('campaign', k),
    pg_temp.choose(%(campaign_names)s::text[], 'cm.name', k) || ' ' || (2020 + mod(k, 6)) || ' #' || k,
    CASE WHEN mod(k, 4) = 3 THEN NULL ELSE pg_temp.choose(%(notes)s::text[], 'cm.description', k) END,
    pg_temp.choose(ARRAY['draft', 'scheduled', 'running', 'running', 'paused', 'finished', 'finished',
                         'archived']::campaign_management.campaign_status[], 'cm.status', k),
    pg_temp.choose(ARRAY['email', 'social', 'search', 'display', 'events', 'referral'], 'cm.channel', k),
    CASE WHEN mod(k, 5) = 1 THEN NULL ELSE (abs(mod(pg_temp.h('cm.budget', k), 100000000000)) / 100.0)::numeric(14, 2) END,
    pg_temp.choose(ARRAY['USD', 'EUR', 'COP', 'MXN', 'BRL', 'JPY'], 'cm.currency', k),
    CASE WHEN mod(k, 9) = 5 THEN NULL ELSE r.starts_on END,
    CASE WHEN mod(k, 7) = 2 THEN NULL ELSE r.starts_on + pg_temp.pick('cm.length', k, 120) END,
    CASE mod(k, 6)
        WHEN 0 THEN NULL
        WHEN 3 THEN '{}'::text[]
        WHEN 4 THEN ARRAY['construcción', NULL, '建設']
        ELSE pg_temp.some(ARRAY['obra', 'BIM', 'descuento', 'webinar', 'feria', 'スマート', 'green 🌱'], 'cm.keywords', k, 4)
    END,
    CASE WHEN mod(k, 8) = 6 THEN NULL
         ELSE jsonb_build_object('countries', jsonb_build_array('CO', 'MX', 'ES'),
                                 'age', jsonb_build_object('min', 25, 'max', 60),
                                 'segments', jsonb_build_array('pymes', 'gobierno', NULL),
                                 'exclude_previous', mod(k, 2) = 0) END,
    CASE WHEN mod(k, 10) = 8 THEN NULL ELSE pg_temp.choose(%(first_names)s::text[], 'cm.by', k) END,
    r.created_at,
    r.created_at  -- as inserted; _EDITS stamps the rows changed since
FROM generate_series(1, %(campaigns)s::integer) AS k
CROSS JOIN LATERAL (
    SELECT pg_temp.moment('cm.created', k, '2020-01-01', 5 * 365) AS created_at,
           DATE '2020-02-01' + pg_temp.pick('cm.starts', k, 5 * 365) AS starts_on
) AS r
"""

_CAMPAIGN_PARTNERS = r"""
INSERT INTO campaign_management.campaign_partners (
    id, campaign_id, partner_id, role, commission_rate, is_active, joined_at, left_at)
SELECT
    n,
    pg_temp.uid('campaign', s.k),
    -- consecutive partner numbers from a random start: distinct within a campaign,
    -- and each one exists in public.partners
    pg_temp.uid('partner', 1 + mod(s.first_partner - 1 + s.a, %(partners)s::integer)),
    pg_temp.choose(ARRAY['sponsor', 'affiliate', 'affiliate', 'influencer', 'reseller', 'co-host'], 'cp.role', n),
    CASE WHEN mod(n, 6) = 1 THEN NULL ELSE round((pg_temp.rnd('cp.rate', n) * 0.3)::numeric, 6) END,
    r.is_active,
    r.joined_at,
    CASE WHEN NOT r.is_active THEN r.joined_at + pg_temp.secs(pg_temp.rnd('cp.left', n) * 200 * 86400) END
FROM (
    SELECT k, a, pg_temp.pick('cp.first', k, %(partners)s::integer) AS first_partner,
           row_number() OVER (ORDER BY k, a) AS n
    FROM generate_series(1, %(campaigns)s::integer) AS k
    CROSS JOIN LATERAL generate_series(
        0, least(%(partners)s::integer, pg_temp.pick('cp.count', k, %(max_partners_per_campaign)s::integer)) - 1) AS a
) AS s
CROSS JOIN LATERAL (
    SELECT pg_temp.rnd('cp.active', n) < 0.8 AS is_active,
           pg_temp.moment('cp.joined', n, '2020-02-01', 5 * 365) AS joined_at
) AS r
"""

_CAMPAIGN_METRICS = r"""
INSERT INTO campaign_management.campaign_metrics (
    id, campaign_partner_id, metric_date, impressions, clicks, conversions, spend, revenue,
    attribution_score, breakdown, recorded_at)
SELECT
    n,
    s.campaign_partner_id,
    s.metric_date,
    m.impressions,
    m.clicks,
    floor(m.clicks * pg_temp.rnd('m.conversions', n) * 0.1)::integer,
    round((pg_temp.rnd('m.spend', n) * 5000)::numeric, 4),
    CASE WHEN mod(n, 6) = 2 THEN NULL
         WHEN mod(n, 13) = 7 THEN -(abs(mod(pg_temp.h('m.refund', n), 100000000000))::numeric / 1000000)  -- refunds
         ELSE abs(mod(pg_temp.h('m.revenue', n), 100000000000000))::numeric / 1000000 END,
    CASE WHEN mod(n, 4) = 1 THEN NULL
         -- dozens of significant digits
         WHEN mod(n, 97) = 5 THEN pg_temp.h('m.attr1', n)::numeric
                                  + pg_temp.h('m.attr2', n)::numeric / 10000000000000000000000000000000000000000
         WHEN mod(n, 97) = 6 THEN 0
         ELSE round(pg_temp.rnd('m.attr', n)::numeric, 10) END,
    CASE WHEN mod(n, 5) = 3 THEN NULL
         ELSE jsonb_build_object('device', jsonb_build_object('mobile', round(pg_temp.rnd('m.mobile', n)::numeric, 3),
                                                              'desktop', NULL),
                                 'geo', jsonb_build_array('CO', 'MX', 'ES')) END,
    pg_temp.moment('m.recorded', n, (s.metric_date + 1)::timestamp, 0.25)
FROM (
    SELECT cp.id AS campaign_partner_id, (cp.joined_at AT TIME ZONE 'UTC')::date + d AS metric_date,
           row_number() OVER (ORDER BY cp.id, d) AS n
    FROM campaign_management.campaign_partners AS cp
    CROSS JOIN LATERAL generate_series(0, pg_temp.pick('m.days', cp.id, 5) - 1) AS d
) AS s
CROSS JOIN LATERAL (
    SELECT abs(mod(pg_temp.h('m.impressions', n), 5000000)) AS impressions,
           floor(abs(mod(pg_temp.h('m.impressions', n), 5000000)) * pg_temp.rnd('m.ctr', n) * 0.08)::bigint AS clicks
) AS m
"""

_CAMPAIGN_ASSETS = r"""
INSERT INTO campaign_management.campaign_assets (
    id, campaign_id, asset_type, file_name, mime_type, content, alt_text, created_at)
SELECT
    n,
    pg_temp.uid('campaign', s.k),
    pg_temp.choose(ARRAY['banner', 'video', 'copy', 'landing_page'], 'as.type', n),
    pg_temp.choose(ARRAY['banner_1200x628.png', 'vídeo-promoción.mp4', 'copy_español.txt', 'ランディング.html',
                         'hero 🚀.webp'], 'as.file', n),
    CASE WHEN mod(n, 6) = 4 THEN NULL
         ELSE pg_temp.choose(ARRAY['image/png', 'video/mp4', 'text/plain; charset=utf-8', 'text/html', 'image/webp'], 'as.mime', n) END,
    CASE WHEN mod(n, 2000) = 1 THEN pg_temp.random_bytes('as.big', n, 1048576)  -- ~1 MB video clip
         WHEN mod(n, 5) = 2 THEN NULL
         ELSE '\x89504e470d0a1a0a'::bytea || pg_temp.random_bytes('as.content', n, 256 + pg_temp.pick('as.size', n, 2048)) END,
    CASE WHEN mod(n, 3) = 0 THEN NULL ELSE pg_temp.choose(%(notes)s::text[], 'as.alt', n) END,
    pg_temp.moment('as.created', n, '2020-01-01', 5 * 365)
FROM (
    SELECT k, a, row_number() OVER (ORDER BY k, a) AS n
    FROM generate_series(1, %(campaigns)s::integer) AS k
    CROSS JOIN LATERAL generate_series(1, pg_temp.pick('as.count', k, 4)) AS a
) AS s
"""

# Tracking events, routed by the partitioned table to their month's partition:
# about a tenth fall outside the months created (late and early events) and
# land in the DEFAULT partition, and some sit exactly on a month boundary
# (they belong to the later month).
_CAMPAIGN_EVENTS = r"""
INSERT INTO campaign_management.campaign_events (
    id, campaign_id, campaign_partner_id, event_type, occurred_at, session_id, country_code, amount, properties)
SELECT
    n,
    s.campaign_id,
    CASE WHEN mod(n, 7) = 4 THEN NULL ELSE s.campaign_partner_id END,  -- organic: no partner
    r.event_type,
    CASE WHEN mod(n, 101) = 7
         THEN (TIMESTAMP '2024-07-01' + make_interval(months => pg_temp.pick('ev.boundary', n, 6))) AT TIME ZONE 'UTC'
         ELSE pg_temp.moment('ev.at', n, '2024-06-24', 205) END,
    CASE WHEN mod(n, 6) = 5 THEN NULL ELSE pg_temp.uid('session', n / 3) END,  -- ~3 events per session
    CASE WHEN mod(n, 5) = 2 THEN NULL ELSE pg_temp.choose(%(countries)s::text[], 'ev.country', n) END,
    CASE r.event_type
        WHEN 'conversion' THEN round((10 + pg_temp.rnd('ev.revenue', n) * 990)::numeric, 4)
        WHEN 'click' THEN round((pg_temp.rnd('ev.cpc', n) * 3)::numeric, 4)
    END,
    CASE WHEN mod(n, 4) = 1 THEN NULL
         WHEN mod(n, 50) = 22 THEN '{}'::jsonb
         ELSE jsonb_build_object(
             'utm_source', pg_temp.choose(ARRAY['google', 'facebook', 'linkedin', 'newsletter', 'partner'], 'ev.source', n),
             'device', pg_temp.choose(ARRAY['mobile', 'desktop', 'tablet', NULL], 'ev.device', n),
             'landing', 'https://hexabuilders.example/' || pg_temp.choose(ARRAY['obra', 'bim', 'ofertas', 'キャンペーン'], 'ev.path', n)) END
FROM (
    SELECT cp.id AS campaign_partner_id, cp.campaign_id, e,
           row_number() OVER (ORDER BY cp.id, e) AS n
    FROM campaign_management.campaign_partners AS cp
    CROSS JOIN LATERAL generate_series(1, pg_temp.pick('ev.count', cp.id, 8)) AS e
) AS s
CROSS JOIN LATERAL (
    SELECT pg_temp.choose(ARRAY['impression', 'impression', 'impression', 'impression', 'impression', 'click',
                                'click', 'click', 'conversion', 'unsubscribe'], 'ev.type', n) AS event_type
) AS r
"""

#: (table, statement) in dependency order: parents before children.
_FILL_ORDER: tuple[tuple[str, str], ...] = (
    ("public.partners", _PARTNERS),
    ("public.partner_contacts", _PARTNER_CONTACTS),
    ("public.partner_addresses", _PARTNER_ADDRESSES),
    ("public.partner_contracts", _PARTNER_CONTRACTS),
    ("public.partner_tags", _PARTNER_TAGS),
    ("public.partner_tag_assignments", _PARTNER_TAG_ASSIGNMENTS),
    ("onboarding.onboarding_processes", _ONBOARDING_PROCESSES),
    ("onboarding.onboarding_steps", _ONBOARDING_STEPS),
    ("onboarding.documents", _DOCUMENTS),
    ("onboarding.process_events", _PROCESS_EVENTS),
    ("recruitment.job_postings", _JOB_POSTINGS),
    ("recruitment.candidates", _CANDIDATES),
    ("recruitment.applications", _APPLICATIONS),
    ("recruitment.interviews", _INTERVIEWS),
    ("recruitment.candidate_notes", _CANDIDATE_NOTES),
    ("campaign_management.campaigns", _CAMPAIGNS),
    ("campaign_management.campaign_partners", _CAMPAIGN_PARTNERS),
    ("campaign_management.campaign_metrics", _CAMPAIGN_METRICS),
    ("campaign_management.campaign_assets", _CAMPAIGN_ASSETS),
    ("campaign_management.campaign_events", _CAMPAIGN_EVENTS),
)

# --------------------------------------------------------------------------
# Edits: rows changed after they were written, through each table's
# BEFORE UPDATE trigger. The rows are generated in their current state; an
# edit stamps when that state was reached (setting updated_at itself, which
# the trigger keeps: now() would make the data differ from one fill to the
# next). At least a second later, so the trigger sees a new value.
# --------------------------------------------------------------------------


_STAMP_EDITS = """
UPDATE {table}
SET updated_at = created_at + pg_temp.secs(1 + pg_temp.rnd(%(key)s || '.updated:' || id::text, 0) * %(max_days)s * 86400)
WHERE pg_temp.rnd(%(key)s || '.edited:' || id::text, 0) < %(fraction)s
"""

# Recruiters pin some of their notes later on.
_PIN_CANDIDATE_NOTES = """
UPDATE recruitment.candidate_notes
SET pinned = true, updated_at = created_at + pg_temp.secs(60 + pg_temp.rnd('cn.pinned_at', id) * 20 * 86400)
WHERE pg_temp.rnd('cn.pinned', id) < 0.15
"""


def _stamp_edits(table: str, key: str, fraction: float, max_days: int) -> tuple[sql.Composable, dict[str, object]]:
    """Stamp ``fraction`` of ``table``'s rows as edited within ``max_days`` of their creation.

    ``key`` names the pseudo-random draws, so each table gets its own.
    """
    statement = sql.SQL(_STAMP_EDITS).format(table=_table_identifier(table))
    return statement, {"key": key, "fraction": fraction, "max_days": max_days}


#: (statement, parameters), run once every table is filled.
_EDITS: tuple[tuple[sql.Composable, dict[str, object]], ...] = (
    _stamp_edits("public.partners", "p", 0.8, 400),
    _stamp_edits("onboarding.onboarding_processes", "o", 0.85, 90),
    _stamp_edits("recruitment.job_postings", "j", 0.5, 60),
    _stamp_edits("recruitment.candidates", "cd", 0.4, 300),
    (sql.SQL(_PIN_CANDIDATE_NOTES), {}),
    _stamp_edits("campaign_management.campaigns", "cm", 0.9, 30),
)


# --------------------------------------------------------------------------
# Fill
# --------------------------------------------------------------------------


def fill_shared_source(
    conn: psycopg.Connection,
    *,
    scale: int,
    seed: int,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Fill today's four schemas with generated data; return rows written per ``"schema.table"``.

    ``scale`` is the number of partners; the other tables grow in proportion
    (about 46 rows in all per partner). The same ``(scale, seed)`` writes the
    same bytes. The schemas must exist (:func:`create_shared_source`) and be
    empty: a non-empty table is refused before anything is written.

    Runs in one transaction, committed at the end unless the caller already
    holds one. Some rows are then edited (see ``_EDITS``), identity and serial
    sequences are moved past the largest id, the materialized views are
    refreshed, and tables and views are analyzed. ``progress(table, rows)`` is
    called after each table, if given.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must be a 64-bit integer, got {seed!r}")

    sizes = Sizes.for_scale(scale)
    params = _parameters(sizes)
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        _prepare_session(cur, seed)
        _refuse_non_empty(cur)
        cur.execute(_HELPERS)
        for table, statement in _FILL_ORDER:
            cur.execute(statement, params)  # type: ignore[arg-type]  # static text, values as parameters
            counts[table] = cur.rowcount
            if progress is not None:
                progress(table, cur.rowcount)
        for statement, edit_params in _EDITS:
            cur.execute(statement, edit_params or None)
        cur.execute(_DROP_HELPERS)
        _advance_sequences(cur)
        views = _refresh_materialized_views(cur)
        for table in [*counts, *views]:
            cur.execute(sql.SQL("ANALYZE {}").format(_table_identifier(table)))
    return counts


def _prepare_session(cur: psycopg.Cursor, seed: int) -> None:
    """Transaction-local settings: the seed, and output-independent session settings."""
    cur.execute("SELECT pg_catalog.set_config(%s, %s, true)", (_SEED_SETTING, str(seed)))
    # Generated values never depend on TimeZone or extra_float_digits, but pin
    # them anyway. JIT compilation costs more than it saves on these statements.
    cur.execute(
        "SELECT pg_catalog.set_config('TimeZone', 'UTC', true),"
        " pg_catalog.set_config('extra_float_digits', '1', true),"
        " pg_catalog.set_config('jit', 'off', true)"
    )


def _refuse_non_empty(cur: psycopg.Cursor) -> None:
    """Raise ValueError naming the first table that already holds rows."""
    for table, _ in _FILL_ORDER:
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_table_identifier(table)))
        row = cur.fetchone()
        if row is not None and row[0]:
            raise ValueError(f"refusing to fill: {table} already holds rows (sample data goes into empty tables only)")


def _advance_sequences(cur: psycopg.Cursor) -> None:
    """Move every identity/serial sequence of the four schemas past its column's max."""
    cur.execute(
        """
        SELECT n.nspname, c.relname, a.attname,
               pg_catalog.pg_get_serial_sequence(pg_catalog.format('%%I.%%I', n.nspname, c.relname), a.attname)
        FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
          AND pg_catalog.pg_get_serial_sequence(pg_catalog.format('%%I.%%I', n.nspname, c.relname), a.attname) IS NOT NULL
        ORDER BY 1, 2, 3
        """,
        (list(SCHEMAS),),
    )
    for schema, table, column, sequence in cur.fetchall():
        cur.execute(
            sql.SQL("SELECT pg_catalog.setval(%s::regclass, COALESCE(max({column}), 0) + 1, false) FROM {table}").format(
                column=sql.Identifier(column), table=sql.Identifier(schema, table)
            ),
            (sequence,),
        )


def _refresh_materialized_views(cur: psycopg.Cursor) -> list[str]:
    """Populate every materialized view of the four schemas from the rows just written; return them.

    The init scripts create them ``WITH NO DATA``; the services' nightly job
    refreshes them, so on today's shared instance they are populated.
    Creation order is a dependency order: a view can only read what existed
    before it.
    """
    cur.execute(
        """
        SELECT n.nspname || '.' || c.relname
        FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s) AND c.relkind = 'm'
        ORDER BY c.oid
        """,
        (list(SCHEMAS),),
    )
    views = [name for (name,) in cur.fetchall()]
    for view in views:
        cur.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(_table_identifier(view)))
    return views


def grant_service_role(conn: psycopg.Connection, schema: str, user: str) -> None:
    """What a service's role may do in its schema on today's shared instance: read and write it."""
    names = {"schema": sql.Identifier(schema), "user": sql.Identifier(user)}
    for statement in (
        "GRANT USAGE ON SCHEMA {schema} TO {user}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {user}",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {user}",
    ):
        conn.execute(sql.SQL(statement).format(**names))
