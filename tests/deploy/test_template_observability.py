"""template.yaml's probe schedule, CloudWatch dashboard and alarms, through the SAM translator
(cfn-lint runs on the whole template in test_template.py and `make lint`)."""

from __future__ import annotations

import json
import re
from typing import Any

SUB_VAR = re.compile(r"\$\{([^}!]+)\}")


def test_probe_runs_on_an_eventbridge_scheduler_schedule(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    assert res["ProbeFunction"]["Properties"]["Handler"] == "functions.probe.aws.handler"
    schedules = [r for r in res.values() if r["Type"] == "AWS::Scheduler::Schedule"]
    assert len(schedules) == 1
    props = schedules[0]["Properties"]
    assert props["ScheduleExpression"] == {"Ref": "ProbeSchedule"}
    assert props["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert props["Target"]["Arn"] == {"Fn::GetAtt": ["ProbeFunction", "Arn"]}
    assert props["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    # the scheduler's own role may invoke the probe function and nothing else
    role = res[props["Target"]["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    (statement,) = role["Policies"][0]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "lambda:InvokeFunction"
    assert "ProbeFunction" in json.dumps(statement["Resource"])
    assert cfn["Parameters"]["ProbeSchedule"]["Default"] == "rate(5 minutes)"


def dashboard(cfn: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    body = cfn["Resources"]["InferenceDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert isinstance(body, str)
    variables = set(SUB_VAR.findall(body))
    rendered = SUB_VAR.sub("x", body)
    data: dict[str, Any] = json.loads(rendered)
    return data, variables


def test_dashboard_body_is_json_whose_substitutions_exist(cfn: dict[str, Any]) -> None:
    data, variables = dashboard(cfn)
    known = set(cfn["Parameters"]) | set(cfn["Resources"]) | {"AWS::Region", "AWS::StackName"}
    for var in variables:
        assert var.split(".")[0] in known, var
    for widget in data["widgets"]:
        assert {"type", "x", "y", "width", "height", "properties"} <= set(widget)
        assert widget["x"] >= 0 and widget["x"] + widget["width"] <= 24


def test_dashboard_shows_the_genai_metrics_from_the_emf_namespace(cfn: dict[str, Any]) -> None:
    data, _ = dashboard(cfn)
    text = json.dumps(data)
    for name in (
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.server.request.duration",
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage.input",
        "gen_ai.client.token.usage.output",
        "infer.throttles",
        "infer.circuit.state",
        "infer.probe.availability",
    ):
        assert f'MetricName=\\"{name}\\"' in text, name
    # every SEARCH names the namespace and the EMF dimension set
    body = cfn["Resources"]["InferenceDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    schemas = re.findall(r"SEARCH\('\{(.*?)\} ", body)
    assert len(schemas) >= 10
    for schema in schemas:
        assert schema in ("${MetricsNamespace},operation,model,backend", "AWS/Lambda,FunctionName")


def alarms(cfn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: v["Properties"]
        for k, v in cfn["Resources"].items()
        if v["Type"] == "AWS::CloudWatch::Alarm" and k not in SCALING_ALARMS
    }


#: Alarms that scale the endpoint (their action is a scaling policy, not the alarm topic):
#: tests/deploy/test_template_scaling.py covers them.
SCALING_ALARMS = {"NoCapacityAlarm", "BacklogAlarm"}


def test_alarms_cover_error_rate_throttling_and_dead_letters(cfn: dict[str, Any]) -> None:
    found = alarms(cfn)
    assert set(found) == {
        "ApiErrorRateAlarm",
        "FunctionErrorRateAlarm",
        "LambdaThrottleAlarm",
        "BackendThrottleAlarm",
        "RequestsDeadLetterAlarm",
        "BatchShardsDeadLetterAlarm",
    }
    dlq = {p["Dimensions"][0]["Value"]["Fn::GetAtt"][0] for k, p in found.items() if "Dead" in k}
    assert dlq == {"InferenceRequestsDLQ", "BatchShardsDLQ"}
    rate = found["ApiErrorRateAlarm"]
    assert rate["Threshold"] == {"Ref": "ErrorRatePercent"}
    (out,) = [m for m in rate["Metrics"] if m.get("ReturnData")]
    assert "errors / requests" in out["Expression"]
    fn = found["FunctionErrorRateAlarm"]["Metrics"]
    ids = {m["Id"] for m in fn}
    (expr,) = [m["Expression"] for m in fn if m.get("ReturnData")]
    assert set(re.findall(r"\b[ei]\d\b", expr)) == ids - {"rate"}
    query = found["BackendThrottleAlarm"]["Metrics"][0]["Expression"]["Fn::Sub"]
    assert 'SUM("infer.throttles")' in query and "${MetricsNamespace}" in query


def test_alarms_notify_the_optional_topic(cfn: dict[str, Any]) -> None:
    assert cfn["Parameters"]["AlarmTopicArn"]["Default"] == ""
    for name, props in alarms(cfn).items():
        for key in ("AlarmActions", "OKActions"):
            cond, when_set, _ = props[key]["Fn::If"]
            assert cond == "HasAlarmTopic", name
            assert when_set == [{"Ref": "AlarmTopicArn"}], name


def test_functions_write_emf_to_the_dashboard_namespace(sam: dict[str, Any]) -> None:
    env = sam["Globals"]["Function"]["Environment"]["Variables"]
    assert env["INFER_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert env["INFER_METRICS_EMF"] == {"Ref": "MetricsEmf"}
    assert sam["Parameters"]["MetricsEmf"]["Default"] == "true"
