"""The CI workflows (.github/workflows): the CLI pinned to the SDK, refresh,
job timeouts, OIDC to Pulumi Cloud, and a nightly drift check per stack."""

from __future__ import annotations

from typing import Any

import yaml

from tests.program.harness import PROJECT_ROOT, STACKS

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"


def workflow(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def pulumi_step() -> dict[str, Any]:
    (step,) = [s for s in workflow("pulumi.yml")["jobs"]["pulumi"]["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@")]
    return step


def test_the_cli_is_the_sdk_version() -> None:
    (pin,) = [line for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines() if line.startswith("pulumi==")]
    assert pulumi_step()["with"]["pulumi-version"] == pin.split("==")[1]


def test_every_run_refreshes_and_has_a_timeout_long_enough_for_an_online_sync() -> None:
    assert pulumi_step()["with"]["refresh"] is True
    job = workflow("pulumi.yml")["jobs"]["pulumi"]
    assert job["timeout-minutes"] == "${{ inputs.command == 'up' && 480 || 30 }}"


def test_pulumi_cloud_through_oidc_without_a_long_lived_token() -> None:
    text = "".join(path.read_text() for path in WORKFLOWS.glob("*.yml"))
    assert "PULUMI_ACCESS_TOKEN" not in text and "secrets: inherit" not in text
    steps = workflow("pulumi.yml")["jobs"]["pulumi"]["steps"]
    (auth,) = [s for s in steps if str(s.get("uses", "")).startswith("pulumi/auth-actions@")]
    assert auth["with"]["requested-token-type"] == "urn:pulumi:token-type:access_token:organization"
    assert steps.index(auth) < steps.index(pulumi_step())
    for name, job in workflow("ci.yml")["jobs"].items():
        if job.get("uses"):
            assert job["permissions"]["id-token"] == "write", name


def test_a_nightly_drift_check_per_stack_fails_on_changes() -> None:
    drift = workflow("drift.yml")
    assert drift[True]["schedule"][0]["cron"]  # YAML reads the `on` key as true
    (job,) = drift["jobs"].values()
    assert job["strategy"]["matrix"]["stack"] == list(STACKS)
    assert job["with"]["command"] == "preview" and job["with"]["expect-no-changes"] is True
    assert job["with"]["environment"] == "${{ matrix.stack }}-preview"  # read-only identities
    assert pulumi_step()["with"]["expect-no-changes"] == "${{ inputs.expect-no-changes }}"
