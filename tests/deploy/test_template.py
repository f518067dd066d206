"""template.yaml: cfn-lint clean, transformed by the SAM translator offline, and the
deployment rules of docs/deploy-aws.md hold in the transformed CloudFormation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.procs import ROOT

TEMPLATE = ROOT / "template.yaml"
MANAGED_POLICIES = {
    name: f"arn:aws:iam::aws:policy/service-role/{name}"
    for name in ("AWSLambdaBasicExecutionRole", "AWSLambdaSQSQueueExecutionRole")
}
HTTP_ROUTES = {
    ("POST", "/v1/chat/completions"): "ChatFunction",
    ("POST", "/v1/completions"): "CompletionsFunction",
    ("POST", "/v1/embeddings"): "EmbeddingsFunction",
    ("GET", "/v1/models"): "ModelsFunction",
    ("GET", "/v1/usage"): "ModelsFunction",
    ("GET", "/healthz"): "HealthFunction",
    ("GET", "/readyz"): "HealthFunction",
    ("POST", "/v1/jobs"): "JobsFunction",
    ("GET", "/v1/jobs/{id}"): "JobsFunction",
}
MODEL_CALLERS = (
    "ChatFunction",
    "ChatStreamFunction",
    "CompletionsFunction",
    "EmbeddingsFunction",
    "QueueWorkerFunction",
    "BatchFunction",
    "BatchShardFunction",
)


# Some tests need the built lambda.zip (session fixture): allow for the build.
pytestmark = pytest.mark.timeout(600)


class ManagedPolicyLoader:
    """What the translator asks IAM for, answered offline."""

    def load(self) -> dict[str, str]:
        return MANAGED_POLICIES


def functions(sam: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: v["Properties"]
        for k, v in sam["Resources"].items()
        if v["Type"] == "AWS::Serverless::Function"
    }


def test_cfn_lint_reports_nothing() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run(
        [str(cfn_lint), "--format", "parseable", str(TEMPLATE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(
        TEMPLATE.read_text().replace("VisibilityTimeout: 720", "VisibilityTimeout: x")
    )
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run([str(cfn_lint), str(broken)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "E3012" in proc.stdout  # not of type integer


def test_every_function_runs_the_one_zip_on_python311_x86_64(sam: dict[str, Any]) -> None:
    glob = sam["Globals"]["Function"]
    assert glob["CodeUri"] == "dist/lambda.zip"
    assert glob["Runtime"] == "python3.11"
    assert glob["Architectures"] == ["x86_64"]
    for name, props in functions(sam).items():
        assert "CodeUri" not in props, f"{name} must use the built zip"
        assert props.get("Runtime", "python3.11") == "python3.11"


def test_handlers_exist_in_the_lambda_artifact(
    sam: dict[str, Any], package_unpacked: dict[str, Path]
) -> None:
    root = package_unpacked["lambda"]
    for name, props in functions(sam).items():
        handler = props["Handler"]
        if name == "ChatStreamFunction":
            assert handler == "functions/chat/lambda_stream.sh"
            assert (root / handler).is_file()
            continue
        module, _, attr = handler.rpartition(".")
        assert attr in ("handler", "shard_handler"), handler
        assert module.startswith("functions.") and module.endswith(".aws"), handler
        source = root / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{name}: {handler}"
        text = source.read_text()
        assert f"def {attr}(" in text or f"\n{attr} = " in text, f"{name}: no {attr} in {module}"


def test_environment_carries_the_settings(sam: dict[str, Any]) -> None:
    env = sam["Globals"]["Function"]["Environment"]["Variables"]
    assert env["INFER_BACKENDS"] == {"Ref": "Backends"}
    assert env["INFER_QUEUE_URL"] == {"Ref": "InferenceRequestsQueue"}
    bucket = sam["Resources"]["DataBucket"]["Properties"]["BucketName"]
    assert env["INFER_BUCKET"] == bucket


def test_http_routes_match_the_design(cfn: dict[str, Any]) -> None:
    routes = {}
    for res in cfn["Resources"].values():
        if res["Type"] == "AWS::ApiGatewayV2::Api":
            for path, methods in res["Properties"]["Body"]["paths"].items():
                for method, op in methods.items():
                    uri = op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
                    fn = re.search(r"\$\{(\w+)\.Arn\}", uri)
                    assert fn, uri
                    routes[(method.upper(), path)] = fn.group(1)
    assert routes == HTTP_ROUTES


def test_streaming_chat_uses_lambda_web_adapter_and_a_streaming_url(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    fn = res["ChatStreamFunction"]["Properties"]
    env = fn["Environment"]["Variables"]
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert fn["Handler"] == "functions/chat/lambda_stream.sh"
    layer = fn["Layers"][0]["Fn::If"]
    assert layer[1] == {"Ref": "LambdaWebAdapterLayerArn"}
    assert "753240598075:layer:LambdaAdapterLayerX86" in layer[2]["Fn::Sub"]
    url = res["ChatStreamFunctionUrl"]["Properties"]
    assert url["InvokeMode"] == "RESPONSE_STREAM"
    assert url["AuthType"] == {"Ref": "StreamUrlAuthType"}
    assert cfn["Parameters"]["StreamUrlAuthType"]["Default"] == "AWS_IAM"


def test_queue_has_dlq_and_visibility_of_six_worker_timeouts(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    queue = res["InferenceRequestsQueue"]["Properties"]
    worker_timeout = res["QueueWorkerFunction"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * worker_timeout
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["InferenceRequestsDLQ", "Arn"]},
        "maxReceiveCount": 5,
    }
    mapping = res["QueueWorkerFunctionRequests"]["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["InferenceRequestsQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] >= 1
    assert "MaximumBatchingWindowInSeconds" in mapping
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "WorkerMaxConcurrency"}


def test_batch_function_fires_on_jsonl_under_batch_in(cfn: dict[str, Any]) -> None:
    bucket = cfn["Resources"]["DataBucket"]
    (config,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    assert config["Event"] == "s3:ObjectCreated:*"
    assert config["Function"] == {"Fn::GetAtt": ["BatchFunction", "Arn"]}
    rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": "batch-in/", "suffix": ".jsonl"}


def _statements(cfn: dict[str, Any], function: str) -> list[dict[str, Any]]:
    role = cfn["Resources"][f"{function}Role"]["Properties"]
    out = []
    for policy in role.get("Policies", []):
        if "Fn::If" in policy:
            policy = policy["Fn::If"][1]
        out += policy["PolicyDocument"]["Statement"]
    return out


def test_inline_policies_are_scoped_to_the_stack_resources(cfn: dict[str, Any]) -> None:
    """Each inline statement names this stack's bucket, queues or the SageMaker endpoint only:
    the batch functions touch the shards queue, the queue worker its queue and DLQ."""
    from tests.iam_policy import SAGEMAKER_ENDPOINT, Stack

    stack = Stack(cfn)
    (bucket,) = stack.buckets()
    queues = {
        "jobs": f"arn:aws:sqs:us-east-1:123456789012:{stack.queue_name('InferenceRequestsQueue')}",
        "dlq": f"arn:aws:sqs:us-east-1:123456789012:{stack.queue_name('InferenceRequestsDLQ')}",
        "shards": f"arn:aws:sqs:us-east-1:123456789012:{stack.queue_name('BatchShardsQueue')}",
    }
    for function in stack.functions():
        role = cfn["Resources"][f"{function}Role"]["Properties"]
        for policy in stack.resolve(role.get("Policies", [])):
            for st in policy["PolicyDocument"]["Statement"]:
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                assert "*" not in resources, (function, st)
                for arn in resources:
                    if arn.startswith("arn:aws:s3:::"):
                        assert arn == f"arn:aws:s3:::{bucket}" or arn.startswith(
                            f"arn:aws:s3:::{bucket}/"
                        ), (function, arn)
                    elif arn.startswith("arn:aws:sqs:"):
                        allowed = (
                            {queues["shards"]}
                            if function.startswith("Batch")
                            else {queues["jobs"], queues["dlq"]}
                            if function == "QueueWorkerFunction"
                            else {queues["jobs"]}
                        )
                        assert arn in allowed, (function, arn)
                    else:
                        assert arn == SAGEMAKER_ENDPOINT, (function, arn)


def test_sagemaker_invoke_is_granted_on_the_endpoint_arn_only(cfn: dict[str, Any]) -> None:
    for function in MODEL_CALLERS:
        sm = [s for s in _statements(cfn, function) if "sagemaker:InvokeEndpoint" in s["Action"]]
        assert len(sm) == 1, function
        assert sm[0]["Resource"] == {"Ref": "SageMakerEndpointArn"}
        # InvokeEndpointWithResponseStream is authorised as sagemaker:InvokeEndpoint.
        assert sm[0]["Action"] == ["sagemaker:InvokeEndpoint"]
    for function in ("ModelsFunction", "HealthFunction", "JobsFunction"):
        assert not [s for s in _statements(cfn, function) if "sagemaker" in str(s["Action"])]


def test_bucket_is_private_and_not_referenced_by_policies(sam: dict[str, Any]) -> None:
    bucket = sam["Resources"]["DataBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    # A Ref to the bucket from a function's policy would close the cycle
    # bucket -> notification -> function -> role -> bucket.
    for name, props in functions(sam).items():
        assert "DataBucket" not in str(props.get("Policies", "")), name


def test_outputs_name_api_stream_url_queue_and_bucket(cfn: dict[str, Any]) -> None:
    assert {"ApiUrl", "ChatStreamUrl", "QueueUrl", "BucketName"} <= set(cfn["Outputs"])


def rule_holds(expr: Any, params: dict[str, str]) -> bool | str:
    """A CloudFormation rule expression (the functions rules allow that the template uses)
    evaluated as CloudFormation does before it creates anything."""
    if isinstance(expr, str):
        return expr
    ((fn, arg),) = expr.items()
    if fn == "Ref":
        return params[arg]
    if fn == "Fn::Equals":
        return rule_holds(arg[0], params) == rule_holds(arg[1], params)
    if fn == "Fn::Not":
        return not rule_holds(arg[0], params)
    if fn == "Fn::Or":
        return any(rule_holds(a, params) for a in arg)
    if fn == "Fn::And":
        return all(rule_holds(a, params) for a in arg)
    raise AssertionError(f"rule function {fn} is not evaluated here")


def deploy_refused(template: dict[str, Any], **given: str) -> list[str]:
    """The AssertDescriptions of the rules a deploy with ``given`` parameters fails."""
    params = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    params.update(given)
    failed = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not rule_holds(rule["RuleCondition"], params):
            continue
        failed += [a["AssertDescription"] for a in rule["Assertions"]
                   if not rule_holds(a["Assert"], params)]  # fmt: skip
    return failed


@pytest.mark.parametrize("stage", ["sam", "cfn"])
def test_a_default_deploy_cannot_produce_an_open_api(
    stage: str, sam: dict[str, Any], cfn: dict[str, Any]
) -> None:
    """As written and as the SAM translator hands it to CloudFormation: the defaults (no key,
    no JWT) are refused; a key, a JWT, or AllowAnonymous=true on purpose are not."""
    template = sam if stage == "sam" else cfn
    backends = {"Backends": "[]"}
    (why,) = deploy_refused(template, **backends)
    assert "caller check" in why
    assert deploy_refused(template, **backends, ApiKeys="sk-1") == []
    assert deploy_refused(template, **backends, Jwt='{"issuer":"https://i","audience":"a"}') == []
    assert deploy_refused(template, **backends, AllowAnonymous="true") == []
    # the streaming URL open to all (AuthType NONE) does not lift the check either
    assert deploy_refused(template, **backends, StreamUrlAuthType="NONE")
