"""template.yaml's optional GPU endpoint scaling (ScaleResourceId), resolved per stack the
way CloudFormation would: nothing without it; for an inference component a scalable target
that may reach zero copies, target tracking on invocations per copy, and the way back from
zero (NoCapacityInvocationFailures and the functions' backlog alarm a step policy)."""

from __future__ import annotations

import re
from typing import Any

from tests.iam_policy import Stack

SCALING = ("EndpointScalableTarget", "EndpointTargetTracking", "EndpointStepOut",
           "NoCapacityAlarm", "BacklogAlarm")  # fmt: skip


def created(stack: Stack) -> dict[str, Any]:
    return {
        name: stack.resolve(res.get("Properties", {}))
        for name, res in stack.resources.items()
        if name in SCALING and ("Condition" not in res or stack.condition(res["Condition"]))
    }


def test_no_scaling_resources_by_default() -> None:
    assert created(Stack.load()) == {}


def test_an_inference_component_scales_to_zero_and_back() -> None:
    base = Stack.load()
    stack = Stack(base.cfn, {"ScaleResourceId": "inference-component/llm-ic",
                             "ScaleBacklogBackend": "gpu", "ScaleMaxCapacity": "3"})  # fmt: skip
    made = created(stack)
    assert set(made) == set(SCALING)
    target = made["EndpointScalableTarget"]
    assert target["ServiceNamespace"] == "sagemaker"
    assert target["ResourceId"] == "inference-component/llm-ic"
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, "3")
    assert "RoleARN" not in target  # the service-linked role: no new IAM in the stack
    tracking = made["EndpointTargetTracking"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerInferenceComponentInvocationsPerCopy"
    )
    assert tracking["ScaleInCooldown"] > tracking["ScaleOutCooldown"]
    step = made["EndpointStepOut"]["StepScalingPolicyConfiguration"]
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    no_cap = made["NoCapacityAlarm"]
    assert no_cap["MetricName"] == "NoCapacityInvocationFailures"
    assert no_cap["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "llm-ic"}]
    assert no_cap["AlarmActions"] == ["EndpointStepOut"]
    backlog = made["BacklogAlarm"]
    metrics = {m["Id"]: m for m in backlog["Metrics"]}
    (shown,) = [m for m in backlog["Metrics"] if m["ReturnData"]]
    assert set(re.findall(r"FILL\((\w+), 0\)", shown["Expression"])) == set(metrics) - {
        shown["Id"]}  # fmt: skip
    waiting = metrics["waiting"]["MetricStat"]["Metric"]
    assert waiting["MetricName"] == "infer.backend.backlog"
    assert {d["Name"]: d["Value"] for d in waiting["Dimensions"]} == {
        "operation": "-", "model": "-", "backend": "gpu"}  # fmt: skip
    queued = {metrics[i]["MetricStat"]["Metric"]["MetricName"] for i in ("visible", "deferred")}
    assert queued == {"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesDelayed"}
    assert backlog["AlarmActions"] == ["EndpointStepOut"]


def test_a_variant_scales_its_instances_without_the_component_alarm() -> None:
    base = Stack.load()
    stack = Stack(base.cfn, {"ScaleResourceId": "endpoint/llm/variant/AllTraffic",
                             "ScaleMinCapacity": "1"})  # fmt: skip
    made = created(stack)
    assert set(made) == {"EndpointScalableTarget", "EndpointTargetTracking", "EndpointStepOut"}
    assert made["EndpointScalableTarget"]["ScalableDimension"] == (
        "sagemaker:variant:DesiredInstanceCount"
    )
    tracking = made["EndpointTargetTracking"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerVariantInvocationsPerInstance"
    )
