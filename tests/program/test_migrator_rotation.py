"""The migrator's login is disabled after each migration; its password is drawn again exactly when
the SchemaMigration has work to do, which brings the login back for that update."""

from __future__ import annotations

from pathlib import Path

from tests.program.harness import PASSWORD, project_copy, run_program, services_of, stack_file


def _keepers(graph) -> dict[str, str]:
    return {
        resource.name.removesuffix("-migrator-password"): resource.plain["keepers"]["migration"]
        for resource in graph.of_type(PASSWORD)
        if resource.name.endswith("-migrator-password")
    }


def test_the_migrator_password_changes_only_with_the_migrations_work(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project")
    values = stack_file("prod")
    before = _keepers(run_program("prod", values, tmp_path / "before.json", project))

    init = project / "sql" / "onboarding_init.sql"
    init.write_text(init.read_text() + "\nCREATE INDEX IF NOT EXISTS documents_uploaded_idx ON onboarding.documents (uploaded_at);\n")
    services_of(values)[3]["cutover"] = False
    services_of(values)[3]["sharedSecretName"] = "campaign-shared-db"
    services_of(values)[2]["tier"] = "db-custom-4-15360"  # the instance changes, not the migration's work
    after = _keepers(run_program("prod", values, tmp_path / "after.json", project))

    assert set(before) == set(after) == {"partner-management", "onboarding", "recruitment", "campaign-management"}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"onboarding", "campaign-management"}
