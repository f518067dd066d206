"""GitHub workflows: actionlint clean, and they build, log in and deploy as documented."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.procs import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return data


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in workflow["jobs"].values() for s in job["steps"]]


def step_using(workflow: dict[str, Any], action: str) -> dict[str, Any]:
    found = [s for s in steps(workflow) if str(s.get("uses", "")).startswith(action + "@")]
    assert len(found) == 1, f"{action} used {len(found)} times"
    return found[0]


def run_text(workflow: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in steps(workflow))


def lint(actionlint: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        actionlint, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_actionlint_passes_on_every_workflow(actionlint: list[str]) -> None:
    proc = lint(actionlint, ROOT)
    count = len(list(WORKFLOWS.glob("*.yml")))
    assert count >= 3
    assert f"Checking {count} workflow file(s)" in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(actionlint: list[str], tmp_path: Path) -> None:
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    broken = (
        (WORKFLOWS / "deploy-azure.yml").read_text().replace("id-token: write", "id-token: writ")
    )
    (wf / "deploy-azure.yml").write_text(broken.replace("client-id:", "client-idd:"))
    proc = lint(actionlint, tmp_path)
    assert proc.returncode == 1
    assert '"writ" is invalid for permission of scope "id-token"' in proc.stdout
    assert 'input "client-idd" is not defined' in proc.stdout


def test_ci_runs_make_test_on_python_311_and_node_20() -> None:
    ci = load("ci.yml")
    step_using(ci, "actions/checkout")
    assert step_using(ci, "actions/setup-python")["with"]["python-version"] == "3.11"
    assert step_using(ci, "actions/setup-node")["with"]["node-version"] == "20"
    assert "make test" in run_text(ci)


@pytest.mark.parametrize("name", ["deploy-azure.yml", "deploy-aws.yml"])
def test_deploys_use_oidc_on_dispatch_and_tags(name: str) -> None:
    wf = load(name)
    triggers = wf[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "workflow_dispatch" in triggers
    assert triggers["push"]["tags"]
    assert wf["permissions"]["id-token"] == "write"
    assert "make package" in run_text(wf)
    assert "secrets." not in (WORKFLOWS / name).read_text(), "OIDC: no stored credential"


def test_azure_deploy_runs_azd_up_with_oidc() -> None:
    """azd provisions infra/ and deploys the packaged app (azure.yaml); both azd and az (for
    the postdeploy hook) sign in with GitHub's OIDC token, never a stored secret."""
    wf = load("deploy-azure.yml")
    login = step_using(wf, "azure/login")
    assert login["uses"] == "azure/login@v2"
    assert {"client-id", "tenant-id", "subscription-id"} <= set(login["with"])
    step_using(wf, "Azure/setup-azd")
    text = run_text(wf)
    assert "azd auth login" in text and "--federated-credential-provider github" in text
    assert "azd up --no-prompt" in text and "make package" in text
    assert "secrets." not in (WORKFLOWS / "deploy-azure.yml").read_text()


def test_aws_deploy_assumes_a_role_and_deploys_the_built_zip_without_sam_build() -> None:
    wf = load("deploy-aws.yml")
    creds = step_using(wf, "aws-actions/configure-aws-credentials")
    assert creds["uses"].endswith("@v4")
    assert "role-to-assume" in creds["with"]
    step_using(wf, "aws-actions/setup-sam")
    script = run_text(wf)
    assert "sam deploy" in script and "--template-file template.yaml" in script
    assert "sam build" not in script
    order = [s.get("run", "") for s in steps(wf)]
    package_at = next(i for i, r in enumerate(order) if "make package" in r)
    deploy_at = next(i for i, r in enumerate(order) if "sam deploy" in r)
    assert package_at < deploy_at
