"""migrations/privileges.py on real servers: after a migration run as a separate
migration role, the service user is least-privileged in its own database, can
work there and cannot get into another service's database; the migration role
can no longer log in, and comes back when it is given a new password (what
Pulumi does through the Cloud SQL API).

Both layouts of ``tests/cloud_sql.py``: as the Cloud SQL API leaves an
instance, and plain PostgreSQL.
"""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg import sql

from migrations import engine, privileges
from migrations.privileges import PrivilegeError
from tests.cloud_sql import ADMIN_ROLE, CloudTarget, Instance
from tests.support import SERVICES, Service, endpoints_for

ONBOARDING = next(s for s in SERVICES if s.schema == "onboarding")
RECRUITMENT = next(s for s in SERVICES if s.schema == "recruitment")
PARTNER = next(s for s in SERVICES if s.schema == "public")  # its schema is `public`


def migrate(cloud: CloudTarget, shared_source: str, service: Service) -> Instance:
    """Migrate ``service`` as the migration role, then secure it as the engine is asked to."""
    instance = cloud.instance(service)
    target = cloud.migrator_url(instance)
    engine.migrate(endpoints_for(service, shared_source, target), init_sql=service.init_sql, service_user=instance.user.user)
    secure(target, service.schema, instance.user.user)
    return instance


def secure(target: str, schema: str, user: str) -> None:
    """The calls the engine makes after a successful migrate or evolve, as the migration role."""
    with psycopg.connect(target) as conn, conn.transaction(), conn.cursor() as cur:
        privileges.restrict_service_user(cur, user)
        privileges.hand_over(cur, schema, user)
        privileges.verify(cur, schema, user)
        privileges.retire_migrator(cur)


def findings(cloud: CloudTarget, database: str, schema: str, user: str) -> list[str]:
    with psycopg.connect(cloud.superuser(database)) as conn, conn.cursor() as cur:
        return privileges.findings(cur, schema, user)


def owners(conninfo: str, schema: str) -> dict[str, str]:
    """Owner of the schema and of every relation, type and routine in it."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT 'schema', nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %(s)s"
            " UNION ALL SELECT c.relkind::text, c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
            "   WHERE c.relnamespace = %(s)s::regnamespace"
            " UNION ALL SELECT 'type', t.typname, pg_get_userbyid(t.typowner) FROM pg_type t"
            "   WHERE t.typnamespace = %(s)s::regnamespace",
            {"s": schema},
        ).fetchall()
    return {f"{kind} {name}": owner for kind, name, owner in rows}


@pytest.mark.parametrize("iam", [False, True], ids=["password user", "IAM service-account user"])
def test_the_service_user_ends_least_privileged(cloud: CloudTarget, shared_source: str, iam: bool) -> None:
    """The same rules for an IAM user (auth: iam), whose name holds '@', '.' and '-'."""
    instance = cloud.instance(ONBOARDING, iam=iam)
    database, user, migrator = instance.database, instance.user.user, instance.migrator.user
    target = cloud.migrator_url(instance)
    if cloud.layout == "cloud_sql":  # what Cloud SQL gives every user it creates
        assert {f"{user} has CREATEDB", f"{user} has CREATEROLE", f"{user} is a member of {ADMIN_ROLE}"} <= set(
            findings(cloud, database, "postgres", user)
        )

    assert ("@" in user and "." in user) is iam
    engine.migrate(endpoints_for(ONBOARDING, shared_source, target), init_sql=ONBOARDING.init_sql, service_user=user)

    # The engine itself leaves the service least-privileged; `secure` then only retires the migrator.
    assert findings(cloud, database, "onboarding", user) == []
    secure(target, "onboarding", user)
    with psycopg.connect(cloud.superuser(database)) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin,"
            " (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r WHERE rolname = %s",
            (user,),
        ).fetchone()
        assert role == (False, False, False, True, 0)
        public_rights = conn.execute(
            "SELECT (SELECT count(*) FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a"
            "         WHERE d.datname = current_database() AND a.grantee = 0),"
            "       (SELECT count(*) FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a"
            "         WHERE n.nspname = 'onboarding' AND a.grantee = 0)"
        ).fetchone()
        assert public_rights == (0, 0)
        elsewhere = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %s) AND n.nspname NOT IN ('onboarding', 'pg_toast')",
            (user,),
        ).fetchone()[0]
        assert elsewhere == 0
    owned = owners(cloud.superuser(database), "onboarding")
    assert {"schema onboarding", "r onboarding_processes", "S filing_number_seq", "type process_status"} <= owned.keys()
    assert set(owned.values()) == {user}  # the schema, tables, their indexes and sequences, enums
    # The bookkeeping stays the migration role's, out of the service's reach.
    assert set(owners(cloud.superuser(database), "schema_migration").values()) == {migrator}


def test_the_service_works_in_its_database_and_cannot_get_into_another(
    cloud: CloudTarget, shared_source: str
) -> None:
    recruitment = migrate(cloud, shared_source, RECRUITMENT)
    partner = migrate(cloud, shared_source, PARTNER)

    with psycopg.connect(cloud.conninfo(recruitment.database, recruitment.user)) as conn:
        assert conn.execute("SELECT count(*) FROM recruitment.job_postings").fetchone()[0] > 0
        posting = conn.execute(
            "INSERT INTO recruitment.job_postings (partner_id, title) VALUES (gen_random_uuid(), 'Site engineer')"
            " RETURNING id"
        ).fetchone()[0]
        conn.execute("UPDATE recruitment.job_postings SET title = 'Site manager' WHERE id = %s", (posting,))
        conn.execute("DELETE FROM recruitment.job_postings WHERE id = %s", (posting,))
        # It owns its schema: its own schema changes need nobody else.
        conn.execute("CREATE TABLE recruitment.service_notes (id bigint PRIMARY KEY)")
        conn.commit()
        conn.autocommit = True  # CREATE DATABASE runs outside a transaction
        for statement in (
            "CREATE SCHEMA elsewhere",
            "CREATE TABLE public.outside (id int)",
            "CREATE DATABASE another",
            "CREATE ROLE another",
            "SELECT count(*) FROM schema_migration.run",
            f"SET ROLE {recruitment.migrator.user}",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)

    for database, user in ((partner.database, recruitment.user), (recruitment.database, partner.user)):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(cloud.conninfo(database, user)).close()
    # Partner Management's schema is `public`: it owns that one, and nothing else.
    assert set(owners(cloud.superuser(partner.database), "public").values()) == {partner.user.user}
    with psycopg.connect(cloud.conninfo(partner.database, partner.user)) as conn:
        assert conn.execute("SELECT count(*) FROM public.partners").fetchone()[0] > 0


def test_the_migration_role_is_disabled_and_a_new_password_brings_it_back(
    cloud: CloudTarget, shared_source: str
) -> None:
    instance = migrate(cloud, shared_source, RECRUITMENT)
    database, user, migrator = instance.database, instance.user, instance.migrator
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cloud.migrator_url(instance)).close()
    psycopg.connect(cloud.conninfo(database, user)).close()  # the service is not affected

    # What gcp.sql.User does when Pulumi gives the migrator a new password (Cloud SQL runs it as its superuser).
    migrator.password = secrets.token_hex(16)
    with psycopg.connect(cloud.superuser("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(migrator.user), sql.Literal(migrator.password))
        )

    # An update with a changed init SQL, on tables the service now owns.
    changed = (
        RECRUITMENT.init_sql
        + "\nCREATE TABLE IF NOT EXISTS recruitment.interview_slots (id bigint PRIMARY KEY, starts_at timestamptz);\n"
        + "CREATE INDEX IF NOT EXISTS candidates_email_idx ON recruitment.candidates (email);\n"
    )
    target = cloud.migrator_url(instance)
    engine.evolve(endpoints_for(RECRUITMENT, shared_source, target), init_sql=changed, service_user=user.user)
    secure(target, "recruitment", user.user)

    owned = owners(cloud.superuser(database), "recruitment")
    assert owned["r interview_slots"] == owned["i candidates_email_idx"] == user.user
    assert findings(cloud, database, "recruitment", user.user) == []
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(target).close()
    with psycopg.connect(cloud.conninfo(database, user)) as conn:
        conn.execute("INSERT INTO recruitment.interview_slots VALUES (1, now())")


@pytest.mark.parametrize("cloud", ["cloud_sql"], indirect=True)
def test_a_service_user_with_superuser_attributes_is_refused(cloud: CloudTarget) -> None:
    instance = cloud.instance(RECRUITMENT)
    powerful = cloud.create_role("powerful", cloud_sql_user=False, extra=" SUPERUSER REPLICATION")
    with psycopg.connect(cloud.superuser(instance.database)) as conn, conn.cursor() as cur:
        with pytest.raises(PrivilegeError) as refused:
            privileges.restrict_service_user(cur, powerful.user)
        conn.rollback()
        with pytest.raises(PrivilegeError, match="service user nobody_here does not exist"):
            privileges.restrict_service_user(cur, "nobody_here")
        with pytest.raises(PrivilegeError, match="service user nobody_here does not exist"):
            privileges.hand_over(cur, "public", "nobody_here")
        with pytest.raises(PrivilegeError, match="schema nowhere does not exist"):
            privileges.hand_over(cur, "nowhere", powerful.user)
    message = str(refused.value)
    assert "\n" not in message and "SUPERUSER, REPLICATION" in message and powerful.password not in message


@pytest.mark.parametrize("cloud", ["cloud_sql"], indirect=True)
def test_a_superuser_is_never_retired_and_a_refusal_is_one_line(cloud: CloudTarget) -> None:
    instance = cloud.instance(RECRUITMENT)
    with psycopg.connect(cloud.superuser(instance.database)) as conn, conn.cursor() as cur:
        with pytest.raises(PrivilegeError, match="refusing to disable postgres: it is a superuser"):
            privileges.retire_migrator(cur)
        with pytest.raises(PrivilegeError) as refused:
            privileges.verify(cur, "recruitment", instance.user.user)
    message = str(refused.value)
    assert message.startswith(f"service user {instance.user.user} has more than it needs in database {instance.database}: ")
    assert "\n" not in message and "schema recruitment does not exist" in message
    psycopg.connect(cloud.superuser(instance.database)).close()  # still logs in


def test_findings_name_a_service_user_or_schema_that_does_not_exist_in_one_round_trip(shared_source: str) -> None:
    """All the questions go out at once: a missing role or schema must not fail the others."""
    with psycopg.connect(shared_source) as conn, conn.cursor() as cur:
        assert privileges.findings(cur, "onboarding", "nobody_here") == ["service user nobody_here does not exist"]
        current = conn.execute("SELECT current_user").fetchone()[0]
        found = privileges.findings(cur, "no_such_schema", current)
    assert found[-1] == "schema no_such_schema does not exist"
    assert f"{current} has SUPERUSER" in found  # the test servers' own role


def test_handing_over_to_a_missing_user_or_a_missing_schema_is_refused_by_name(shared_source: str) -> None:
    with psycopg.connect(shared_source) as conn, conn.cursor() as cur:
        current = conn.execute("SELECT current_user").fetchone()[0]
        with pytest.raises(PrivilegeError, match="^service user nobody_here does not exist on the target$"):
            privileges.hand_over(cur, "onboarding", "nobody_here")
        with pytest.raises(PrivilegeError, match="^service user nobody_here does not exist on the target$"):
            privileges.restrict_service_user(cur, "nobody_here")
        with pytest.raises(PrivilegeError, match="^schema no_such_schema does not exist on the target; nothing to hand over"):
            privileges.hand_over(cur, "no_such_schema", current)
        conn.rollback()
