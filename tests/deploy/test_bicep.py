"""infra/ (what `azd up` deploys) checked offline: every Bicep file parses (pycep-parser),
checkov's Bicep checks pass (each suppression in the code says why), and the Bicep holds
against the code the way tests/iam_policy.py holds template.yaml:

- every queue and container a trigger, the jobs API or the batch engine uses exists, and
  every queue trigger's poison queue;
- every setting the code needs is set (the triggers' identity-based connection, the timer's
  ``%SETTING%`` schedule, INFER_BACKENDS, Application Insights with Entra ID auth);
- every Azure data-plane client the code imports is covered by a role assignment for the
  app's identity on that resource, and no role is granted that no code needs;
- the Event Grid subscription delivers the blob trigger's container and suffix to the
  blob-triggered function's webhook.

The checks are one function, ``problems``; the last tests remove a role assignment, a queue
and the Event Grid subscription from the parsed Bicep and see it fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from functools import cache
from typing import Any

import pytest
from pycep import BicepParser

from tests.fixtures.events import azure_functions
from tests.fixtures.procs import ROOT

INFRA = ROOT / "infra"
CHECKOV = ROOT / ".local" / "checkov" / "bin" / "checkov"
BLOB_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
QUEUE_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
TABLE_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
#: Azure SDK data-plane packages the code may import -> (Bicep resource, role definition id)
#: the app's identity needs on it. A package missing here fails the test: map it first.
DATA_PLANE = {
    "azure.storage.blob": ("storage", BLOB_OWNER),
    "azure.storage.queue": ("storage", QUEUE_CONTRIBUTOR),
    "azure.data.tables": ("storage", TABLE_CONTRIBUTOR),
    "azure.monitor.opentelemetry.exporter": ("appInsights", METRICS_PUBLISHER),
}
#: Azure packages that are not a data-plane client of a resource this template creates.
NOT_DATA_PLANE = {"azure.functions", "azure.identity", "azure.core", "azurefunctions"}


@cache
def parsed(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = BicepParser().parse(file_path=INFRA / name)
    return doc


def bicep_files() -> list[str]:
    return sorted(str(p.relative_to(INFRA)) for p in INFRA.rglob("*.bicep"))


# -- what the code needs ------------------------------------------------------------------
@cache
def code_needs() -> dict[str, Any]:
    """Queues, containers, settings and data-plane roles, read from the code itself."""
    from shared.batch.config import BatchSettings
    from shared.batch.state import IN, OUT, WORK
    from shared.jobs.config import JobSettings

    queues: set[str] = set()
    containers = {IN, OUT, WORK, str(JobSettings.model_fields["jobs_container"].default)}
    settings = {"INFER_BACKENDS", "PYTHON_ENABLE_INIT_INDEXING",
                "APPLICATIONINSIGHTS_CONNECTION_STRING",
                "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}  # fmt: skip
    blob_triggers: list[tuple[str, str]] = []
    for fn in azure_functions().values():
        for b in fn.get_bindings():
            d = b.get_dict_repr()
            if d.get("connection"):
                conn = d["connection"]
                settings |= {f"{conn}__accountName", f"{conn}__credential", f"{conn}__clientId"}
            if d["type"] == "queueTrigger":
                queues |= {d["queueName"], d["queueName"] + "-poison"}
            if d["type"] == "blobTrigger":
                containers.add(d["path"].split("/")[0])
                blob_triggers.append((fn.get_function_name(), d["path"]))
                assert d.get("source") == "EventGrid", "a deployed blob trigger uses Event Grid"
            for value in (d.get("schedule"), d.get("path"), d.get("queueName")):
                settings |= set(re.findall(r"%([A-Za-z0-9_]+)%", str(value or "")))
    queues.add(str(BatchSettings.model_fields["queue"].default))
    return {"queues": queues, "containers": containers, "settings": settings,
            "roles": data_plane_roles(), "blob_triggers": blob_triggers}  # fmt: skip


def data_plane_roles() -> set[tuple[str, str]]:
    """(resource, role) for each Azure data-plane package imported by shared/ or functions/."""
    found: set[tuple[str, str]] = set()
    pattern = re.compile(r"^\s*(?:from|import)\s+(azure[\w.]*)", re.M)
    for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]:
        for module in pattern.findall(path.read_text()):
            known = [p for p in DATA_PLANE if module == p or module.startswith(p + ".")]
            if known:
                found.add(DATA_PLANE[known[0]])
            elif not any(module == p or module.startswith(p + ".") for p in NOT_DATA_PLANE):
                raise AssertionError(f"{path}: {module} is not mapped to a role (DATA_PLANE)")
    return found


# -- what the Bicep declares --------------------------------------------------------------
def names_of(doc: dict[str, Any], rtype: str) -> set[str]:
    """Names of ``rtype`` resources: a literal name or a loop over an array variable."""
    out: set[str] = set()
    for res in doc.get("resources", {}).values():
        if res["type"] != rtype:
            continue
        config = res["config"]
        loop = config.get("loop_type")
        if loop is None:
            out.add(str(config["name"]))
            continue
        array = loop["detail"]["array_name"]
        if isinstance(array, str):
            out |= set(doc["variables"][array]["value"])
        else:  # concat(a, [b]) of variables and literals
            for arg in array["function"]["parameters"].values():
                if isinstance(arg, str):
                    out |= set(doc["variables"][arg]["value"])
                elif isinstance(arg, list):
                    out |= {str(doc["variables"].get(a, {}).get("value", a)) for a in arg}
    return out


def app_settings(doc: dict[str, Any]) -> set[str]:
    """Keys of the variables the function app's settings are the union of."""
    union = doc["variables"]["settings"]["value"]["function"]["parameters"].values()
    keys: set[str] = set()
    for name in union:
        value = doc["variables"].get(name, {}).get("value")
        if isinstance(value, dict) and "operator" in value:  # cond ? {...} : {}
            value = value["operator"]["operands"]["true_value"]
        if isinstance(value, dict):
            keys |= set(value)
    return keys


def role_assignments(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(scope resource, role definition id) of the app identity's assignments."""
    roles = doc["variables"]["roles"]["value"]
    out = set()
    for res in doc["resources"].values():
        if res["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        props = res["config"]["properties"]
        principal = json.dumps(props["principalId"])
        assert '"identity"' in principal and "principalId" in principal, "the app's identity"
        ref = props["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        role = roles[ref["operator"]["operands"]["operand_2"]] if isinstance(ref, dict) else ref
        out.add((str(res["config"]["scope"]), str(role)))
    return out


def problems(resources: dict[str, Any], eventgrid: dict[str, Any]) -> list[str]:
    need = code_needs()
    found: list[str] = []
    queues = names_of(resources, "Microsoft.Storage/storageAccounts/queueServices/queues")
    for q in sorted(need["queues"] - queues):
        found.append(f"queue {q!r} is used by the code but not created")
    containers = names_of(
        resources, "Microsoft.Storage/storageAccounts/blobServices/containers"
    )
    for c in sorted(need["containers"] - containers):
        found.append(f"container {c!r} is used by the code but not created")
    for s in sorted(need["settings"] - app_settings(resources)):
        found.append(f"app setting {s!r} is needed by the code but not set")
    granted = role_assignments(resources)
    for scope, role in sorted(need["roles"] - granted):
        found.append(f"no role assignment {role} on {scope} for the app's identity")
    for scope, role in sorted(granted - need["roles"]):
        found.append(f"role {role} on {scope} is granted but no code needs it")
    found += event_subscription_problems(eventgrid, need["blob_triggers"])
    return found


def event_subscription_problems(doc: dict[str, Any], triggers: list[tuple[str, str]]) -> list[str]:
    subs = [r for r in doc.get("resources", {}).values()
            if r["type"] == "Microsoft.EventGrid/systemTopics/eventSubscriptions"]  # fmt: skip
    if not subs:
        return ["no Event Grid subscription feeds the blob trigger"]
    params = {k: v.get("default") for k, v in doc.get("parameters", {}).items()}

    def resolved(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: str(params.get(m.group(1), m.group(0))), text)

    found = []
    for function, path in triggers:
        container, _, blob = path.partition("/")
        suffix = blob.split("}")[-1]  # {name}.jsonl -> .jsonl
        ok = False
        for sub in subs:
            props = sub["config"]["properties"]
            url = resolved(props["destination"]["properties"]["endpointUrl"])
            f = props["filter"]
            ok |= (
                "/runtime/webhooks/blobs?" in url
                and f"functionName=Host.Functions.{function}&" in url
                and "systemKeys.blobs_extension" in url
                and f.get("includedEventTypes") == ["Microsoft.Storage.BlobCreated"]
                and resolved(f.get("subjectBeginsWith", ""))
                == f"/blobServices/default/containers/{container}/blobs/"
                and f.get("subjectEndsWith") == suffix
            )
        if not ok:
            found.append(f"no Event Grid subscription delivers {path} to function {function}")
    return found


# -- the tests ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", bicep_files())
def test_every_bicep_file_parses(name: str) -> None:
    doc = parsed(name)
    assert doc.get("resources") or doc.get("outputs"), name


def test_checkov_bicep_checks_pass() -> None:
    """Every check passes or is suppressed in the code with its reason; none fails to parse.
    Offline: --skip-download, and no Prisma Cloud mapping is fetched."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"}
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(INFRA), "--framework", "bicep", "--skip-download",
         "--compact", "-o", "json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, proc.stdout[-2000:]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["passed"] > 10
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped.get("check_result", {}).get("suppress_comment", "")) > 20, skipped


def test_the_bicep_holds_against_the_code() -> None:
    assert problems(parsed("modules/resources.bicep"), parsed("eventgrid.bicep")) == []


def test_storage_and_app_are_secure_by_default() -> None:
    res = parsed("modules/resources.bicep")["resources"]
    storage = res["storage"]["config"]["properties"]
    assert storage["allowSharedKeyAccess"] is False and storage["minimumTlsVersion"] == "TLS1_2"
    assert storage["allowBlobPublicAccess"] is False
    app = res["functionApp"]["config"]
    assert app["identity"]["type"] == "UserAssigned" and app["properties"]["httpsOnly"] is True
    runtime = app["properties"]["functionAppConfig"]["runtime"]
    assert runtime == {"name": "python", "version": "3.11"}
    auth = app["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert auth["type"] == "UserAssignedIdentity"
    assert res["appInsights"]["config"]["properties"]["DisableLocalAuth"] is True
    basic = {res[k]["config"]["properties"]["allow"] for k in ("ftpCredentials", "scmCredentials")}
    assert basic == {False}
    assert res["plan"]["config"]["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    main = parsed("main.bicep")["parameters"]
    assert {"maximumInstanceCount", "alwaysReadyHttp", "azureOpenAiResourceIds",
            "azureMlEndpointIds", "enableRedis", "inferSettings"} <= set(main)  # fmt: skip


def test_azure_yaml_deploys_the_packaged_app_to_the_tagged_function() -> None:
    import yaml

    azd = yaml.safe_load((ROOT / "azure.yaml").read_text())
    (name, service), = azd["services"].items()
    assert service["host"] == "function" and service["language"] == "python"
    assert service["remoteBuild"] is False and service["project"] == "./dist/azure"
    tags = parsed("modules/resources.bicep")["resources"]["functionApp"]["config"]["tags"]
    assert name in json.dumps(tags) and "azd-service-name" in json.dumps(tags)
    for hook in ("prepackage", "postdeploy"):
        script = ROOT / azd["hooks"][hook]["run"]
        assert script.is_file() and os.access(script, os.X_OK), hook
    assert "eventgrid.bicep" in (ROOT / azd["hooks"]["postdeploy"]["run"]).read_text()


def mutated(edit: Any) -> list[str]:
    resources = copy.deepcopy(parsed("modules/resources.bicep"))
    eventgrid = copy.deepcopy(parsed("eventgrid.bicep"))
    edit(resources, eventgrid)
    return problems(resources, eventgrid)


def test_removing_a_role_assignment_is_caught() -> None:
    found = mutated(lambda r, e: r["resources"].pop("queueRole"))
    assert found == [f"no role assignment {QUEUE_CONTRIBUTOR} on storage for the app's identity"]


def test_removing_a_queue_is_caught() -> None:
    def drop(r: dict[str, Any], e: dict[str, Any]) -> None:
        r["variables"]["queueNames"]["value"].remove("batch-shards-poison")

    assert mutated(drop) == ["queue 'batch-shards-poison' is used by the code but not created"]


def test_removing_or_misrouting_the_event_subscription_is_caught() -> None:
    assert mutated(lambda r, e: e["resources"].pop("batchSubscription")) == [
        "no Event Grid subscription feeds the blob trigger"
    ]

    def wrong_function(r: dict[str, Any], e: dict[str, Any]) -> None:
        e["parameters"]["functionName"]["default"] = "batch_shard"

    assert mutated(wrong_function) == [
        "no Event Grid subscription delivers batch-in/{name}.jsonl to function batch"
    ]


def test_azure_ml_deployments_can_autoscale_on_requests_per_minute() -> None:
    main = parsed("main.bicep")
    assert main["parameters"]["azureMlAutoscale"]["default"] == []
    module = parsed("modules/ml-autoscale.bicep")
    setting = module["resources"]["autoscale"]
    assert setting["type"] == "Microsoft.Insights/autoscalesettings"
    props = setting["config"]["properties"]
    assert props["enabled"] is True
    profile = props["profiles"][0]
    assert set(profile["capacity"]) == {"minimum", "maximum", "default"}
    out, back = profile["rules"]
    assert out["metricTrigger"]["metricName"] == back["metricTrigger"]["metricName"] == (
        "RequestsPerMinute"
    )
    assert out["scaleAction"]["direction"] == "Increase"
    assert back["scaleAction"]["direction"] == "Decrease"
    assert out["scaleAction"]["cooldown"] != back["scaleAction"]["cooldown"]
