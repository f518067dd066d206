"""The IAM check of the suite (tests/fixtures/iam.py, tests/iam_policy.py) and what it says
about template.yaml: the permissions the code needs are granted, on this stack's resources
only, and a call the role does not grant is reported."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.iam import Frame, template_handlers
from tests.iam_policy import (
    ACCOUNT,
    REGION,
    SAGEMAKER_ENDPOINT,
    TEMPLATE,
    Call,
    Stack,
    evaluate,
    required,
    violations,
)

Q = f"arn:aws:sqs:{REGION}:{ACCOUNT}:stack-"
BUCKET = f"arn:aws:s3:::stack-{ACCOUNT}-{REGION}"


@pytest.fixture(scope="module")
def stack() -> Stack:
    return Stack.load()


def without_statement(sid: str) -> str:
    """template.yaml with the inline statement ``sid`` (and its policy entry) removed."""
    lines = TEMPLATE.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == f"- Sid: {sid}")
    start = at - 1  # "- Statement:"
    assert lines[start].strip() == "- Statement:"
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
    ):
        end += 1
    return "\n".join(lines[:start] + lines[end:]) + "\n"


def test_queue_worker_may_send_again_and_to_its_dlq(stack: Stack) -> None:
    for queue in ("inference-requests", "inference-requests-dlq"):
        for action in ("sqs:GetQueueUrl", "sqs:SendMessage"):
            assert stack.allows("QueueWorkerFunction", action, Q + queue), (action, queue)
    assert not stack.allows("QueueWorkerFunction", "sqs:SendMessage", Q + "batch-shards")
    assert not stack.allows("QueueWorkerFunction", "sqs:SendMessage", Q + "batch-shards-dlq")
    # SQSPollerPolicy alone (the template before the fix) grants neither
    before = Stack.from_text(without_statement("RequeueAndDeadLetter"))
    for action in ("sqs:GetQueueUrl", "sqs:SendMessage"):
        assert not before.allows("QueueWorkerFunction", action, Q + "inference-requests-dlq")


def test_batch_functions_may_abort_output_uploads_only(stack: Stack) -> None:
    for fn in ("BatchFunction", "BatchShardFunction"):
        assert stack.allows(fn, "s3:AbortMultipartUpload", f"{BUCKET}/batch-out/x.output.jsonl")
        assert not stack.allows(fn, "s3:AbortMultipartUpload", f"{BUCKET}/jobs/x.json")
        assert not stack.allows(fn, "s3:AbortMultipartUpload", "arn:aws:s3:::other/batch-out/x")
    assert not stack.allows(
        "QueueWorkerFunction", "s3:AbortMultipartUpload", f"{BUCKET}/batch-out/x"
    )
    before = Stack.from_text(without_statement("AbortOutputUpload"))
    assert not before.allows("BatchFunction", "s3:AbortMultipartUpload", f"{BUCKET}/batch-out/x")


def test_streamed_sagemaker_calls_need_invoke_endpoint_on_the_endpoint(stack: Stack) -> None:
    call = Call("sagemaker-runtime", "InvokeEndpointWithResponseStream",
                {"EndpointName": "Model-Endpoint"}, REGION)  # fmt: skip
    assert required(call) == [("sagemaker:InvokeEndpoint", SAGEMAKER_ENDPOINT)]
    for fn in ("ChatFunction", "ChatStreamFunction", "QueueWorkerFunction", "BatchShardFunction"):
        assert stack.allows(fn, "sagemaker:InvokeEndpoint", SAGEMAKER_ENDPOINT)
        assert not stack.allows(fn, "sagemaker:InvokeEndpoint", SAGEMAKER_ENDPOINT + "-2")
    assert not stack.allows("JobsFunction", "sagemaker:InvokeEndpoint", SAGEMAKER_ENDPOINT)


def test_wildcards_and_case_follow_iam() -> None:
    allow = [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/jobs/*"}]
    assert evaluate(allow, "S3:getobject", "arn:aws:s3:::b/jobs/a/b.json")
    assert not evaluate(allow, "s3:PutObject", "arn:aws:s3:::b/jobs/a.json")
    assert not evaluate(allow, "s3:GetObject", "arn:aws:s3:::b/Jobs/a.json")  # ARNs: exact case
    assert not evaluate(allow, "s3:GetObject", "arn:aws:s3:::b/jobs")
    deny = [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]
    assert not evaluate(allow + deny, "s3:GetObject", "arn:aws:s3:::b/jobs/a.json")
    one = [{"Effect": "Allow", "Action": "sqs:Send?essage", "Resource": "arn:aws:sqs:*:1:q"}]
    assert evaluate(one, "sqs:SendMessage", "arn:aws:sqs:eu-west-1:1:q")


def test_reading_a_missing_key_needs_list_bucket() -> None:
    call = Call("s3", "GetObject", {"Bucket": "b", "Key": "k"}, REGION, status=404)
    assert ("s3:ListBucket", "arn:aws:s3:::b") in required(call)
    call.status = 200
    assert required(call) == [("s3:GetObject", "arn:aws:s3:::b/k")]


def frame(function: str, env: dict[str, str], event: Any = None) -> Frame:
    return Frame(function, env, event)


def test_test_names_map_to_the_stack_through_env_event_and_redrive() -> None:
    url = f"http://127.0.0.1:1/{ACCOUNT}/q-test"
    f = frame(
        "QueueWorkerFunction",
        {"INFER_BUCKET": "test-bucket", "INFER_QUEUE_URL": url},
        {"Records": [{"eventSource": "aws:sqs",
                      "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:q-test"}]},
    )  # fmt: skip
    redrive = json.dumps({"deadLetterTargetArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:dlq-test"})
    calls = [
        Call("s3", "PutObject", {"Bucket": "test-bucket", "Key": "jobs/a.json"}, REGION),
        Call("sqs", "GetQueueUrl", {"QueueName": "q-test"}, REGION),
        Call("sqs", "GetQueueAttributes", {"QueueUrl": url}, REGION,
             response={"Attributes": {"RedrivePolicy": redrive}}),
        Call("sqs", "SendMessage", {"QueueUrl": f"http://h/{ACCOUNT}/dlq-test"}, REGION),
    ]  # fmt: skip
    for c in calls:
        c.function, c.frame = f.function, f
    assert violations(calls) == []
    # a bucket or queue the function was not configured with is denied
    stray = [
        Call("s3", "PutObject", {"Bucket": "elsewhere", "Key": "a"}, REGION),
        Call("sqs", "SendMessage", {"QueueUrl": f"http://h/{ACCOUNT}/other-queue"}, REGION),
        Call("s3", "PutBucketPolicy", {"Bucket": "test-bucket"}, REGION),
        Call("sqs", "DeleteQueue", {"QueueUrl": url}, REGION),
    ]
    for c in stray:
        c.function, c.frame = f.function, f
    found = violations(stray)
    assert len(found) == 4, found
    assert any("s3:PutObject on arn:aws:s3:::elsewhere/a" in v for v in found)
    assert any("PutBucketPolicy" in v and "ACTIONS['s3']" in v for v in found)
    assert any("sqs:DeleteQueue" in v for v in found)


def test_only_the_one_granted_sagemaker_endpoint_is_allowed() -> None:
    def backends(*names: str) -> str:
        return json.dumps([{"name": n, "kind": "sagemaker", "endpoint_name": n,
                            "region": REGION} for n in names])  # fmt: skip

    one = frame("ChatFunction", {"INFER_BACKENDS": backends("llm")})
    two = frame("ChatFunction", {"INFER_BACKENDS": backends("llm", "llm-2")})
    calls = []
    for f in (one, two):
        c = Call("sagemaker-runtime", "InvokeEndpoint", {"EndpointName": "llm"}, REGION)
        c.function, c.frame = f.function, f
        calls.append(c)
    assert violations(calls[:1]) == []
    (problem,) = violations(calls[1:])  # SageMakerEndpointArn names one endpoint
    assert "sagemaker:InvokeEndpoint" in problem


def test_every_python_handler_of_the_template_is_tagged(stack: Stack) -> None:
    handlers = template_handlers(TEMPLATE.read_text())
    tagged = {fn for attrs in handlers.values() for fn in attrs.values()}
    assert tagged == set(stack.functions()) - {"ChatStreamFunction"}  # a shell script
    from functions.batch import aws

    assert getattr(aws.handler, "_iam_function", None) == "BatchFunction"
    assert getattr(aws.shard_handler, "_iam_function", None) == "BatchShardFunction"


def test_an_inference_component_needs_its_arn_granted_beside_the_endpoint() -> None:
    """SageMakerEndpointArn is a list: an inference component's calls are authorised on the
    endpoint and on the component, so both must be in it."""
    ic = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:inference-component/llama-ic"
    body = json.dumps([{"name": "sm", "kind": "sagemaker", "endpoint_name": "model-endpoint",
                        "inference_component": "llama-ic", "region": REGION}])  # fmt: skip
    call = Call("sagemaker-runtime", "InvokeEndpoint",
                {"EndpointName": "model-endpoint", "InferenceComponentName": "llama-ic"}, REGION)
    assert required(call) == [("sagemaker:InvokeEndpoint", SAGEMAKER_ENDPOINT),
                              ("sagemaker:InvokeEndpoint", ic)]  # fmt: skip
    f = frame("ChatFunction", {"INFER_BACKENDS": body})
    call.function, call.frame = f.function, f
    both = Stack(Stack.load().cfn, {"SageMakerEndpointArn": f"{SAGEMAKER_ENDPOINT},{ic}"})
    assert violations([call], both) == []
    (problem,) = violations([call])  # only the endpoint granted
    assert "inference-component/llama-ic" in problem
