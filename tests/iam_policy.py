"""template.yaml's IAM, as AWS would evaluate it: each function's role after the SAM translator
expanded its policy templates, intrinsic functions resolved for one fixed stack.

``Stack.load()`` translates template.yaml offline (as ``sam deploy`` would submit it), then
resolves ``Ref`` / ``Fn::GetAtt`` / ``Fn::Sub`` / ``Fn::If`` ... with the stack below. The
SageMaker endpoint parameter is set, so its conditional statements are in.

``Stack.allows(function, action, arn)`` evaluates like IAM's policy logic for identity
policies: an explicit Deny wins, otherwise some Allow statement must match the action (case
insensitive, ``*`` and ``?`` wildcards) and the resource ARN (case sensitive, same
wildcards). Statement forms this evaluator does not implement (``NotAction``,
``NotResource``, ``Condition``) raise, so nothing is silently allowed.

``required(call)`` gives the IAM actions and resource ARNs one recorded botocore call needs
(see ``tests/fixtures/iam.py``): the operation -> action table covers what the code calls; an
operation missing from it fails loudly rather than guessing.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"

STACK = "stack"
ACCOUNT = "123456789012"  # also moto's default account, so queue URLs agree
REGION = "us-east-1"
PARTITION = "aws"
SAGEMAKER_ENDPOINT = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/model-endpoint"
PARAMETERS = {"Backends": "[]", "SageMakerEndpointArn": SAGEMAKER_ENDPOINT}

_LOGS = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
# The AWS managed policies SAM attaches, as AWS publishes them.
MANAGED = {
    "AWSLambdaBasicExecutionRole": [{"Effect": "Allow", "Action": _LOGS, "Resource": "*"}],
    "AWSLambdaSQSQueueExecutionRole": [
        {
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", *_LOGS],
            "Resource": "*",
        }
    ],
}

NOVALUE = object()


class Unsupported(Exception):
    """A template or policy construct this evaluator does not implement."""


# -- operation -> IAM action ----------------------------------------------------------------

SERVICE_PREFIX = {"s3": "s3", "sqs": "sqs", "sagemaker-runtime": "sagemaker"}
# Operations whose IAM action is not "<prefix>:<OperationName>" (Service Authorization
# Reference). S3 is listed in full: its naming is irregular, so an unlisted S3 operation fails.
ACTIONS: dict[str, dict[str, str]] = {
    "s3": {
        "GetObject": "s3:GetObject",
        "HeadObject": "s3:GetObject",
        "PutObject": "s3:PutObject",
        "DeleteObject": "s3:DeleteObject",
        "DeleteObjects": "s3:DeleteObject",
        "CreateMultipartUpload": "s3:PutObject",
        "UploadPart": "s3:PutObject",
        "CompleteMultipartUpload": "s3:PutObject",
        "AbortMultipartUpload": "s3:AbortMultipartUpload",
        "ListParts": "s3:ListMultipartUploadParts",
        "ListMultipartUploads": "s3:ListBucketMultipartUploads",
        "ListObjects": "s3:ListBucket",
        "ListObjectsV2": "s3:ListBucket",
        "HeadBucket": "s3:ListBucket",
        "CopyObject": "s3:PutObject",
        "UploadPartCopy": "s3:PutObject",
        "GetObjectTagging": "s3:GetObjectTagging",
        "PutObjectTagging": "s3:PutObjectTagging",
    },
    "sqs": {
        "SendMessageBatch": "sqs:SendMessage",
        "DeleteMessageBatch": "sqs:DeleteMessage",
        "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    },
    "sagemaker-runtime": {
        # "your IAM permissions must allow the sagemaker:InvokeEndpoint action"
        "InvokeEndpointWithResponseStream": "sagemaker:InvokeEndpoint",
    },
}
S3_BUCKET_OPS = {"ListObjects", "ListObjectsV2", "HeadBucket", "ListMultipartUploads"}


@dataclass
class Call:
    """One AWS API call as botocore made it (recorded by ``tests/fixtures/iam.py``)."""

    service: str  # botocore service name: s3, sqs, sagemaker-runtime
    operation: str
    params: dict[str, Any]
    region: str
    function: str | None = None
    frame: Any = None
    status: int | None = None
    response: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.service}.{self.operation}"


def action_for(call: Call) -> str:
    table = ACTIONS.get(call.service)
    if call.service not in SERVICE_PREFIX or table is None:
        raise Unsupported(f"{call}: no IAM mapping for service {call.service!r}")
    if call.operation in table:
        return table[call.operation]
    if call.service == "s3":
        raise Unsupported(f"{call}: add its IAM action to ACTIONS['s3'] in {__name__}")
    return f"{SERVICE_PREFIX[call.service]}:{call.operation}"


def queue_from_url(url: str) -> tuple[str, str]:
    """(account, name) of an SQS queue URL (``https://host/<account>/<name>``)."""
    parts = [p for p in urlparse(url).path.split("/") if p]
    if len(parts) < 2:
        raise Unsupported(f"not an SQS queue URL: {url!r}")
    return parts[-2], parts[-1]


def required(call: Call, account: str = ACCOUNT) -> list[tuple[str, str]]:
    """``[(action, resource ARN)]`` the call needs, in the names the test used."""
    action = action_for(call)
    p = call.params
    if call.service == "s3":
        bucket = p["Bucket"]
        if call.operation in S3_BUCKET_OPS:
            return [(action, f"arn:aws:s3:::{bucket}")]
        need = [(action, f"arn:aws:s3:::{bucket}/{p['Key']}")]
        if call.operation in ("GetObject", "HeadObject") and p.get("VersionId"):
            need[0] = ("s3:GetObjectVersion", need[0][1])
        if call.operation in ("CopyObject", "UploadPartCopy"):
            src = p["CopySource"]
            src = src if isinstance(src, str) else f"{src['Bucket']}/{src['Key']}"
            need.append(("s3:GetObject", f"arn:aws:s3:::{src.lstrip('/')}"))
        if call.operation in ("GetObject", "HeadObject") and call.status == 404:
            # Without s3:ListBucket a missing key answers 403 AccessDenied, not 404: code
            # that treats "missing" as normal (stores, checkpoints) needs it.
            need.append(("s3:ListBucket", f"arn:aws:s3:::{bucket}"))
        return need
    if call.service == "sqs":
        if "QueueUrl" in p:
            owner, name = queue_from_url(p["QueueUrl"])
        elif "QueueName" in p:
            owner, name = p.get("QueueOwnerAWSAccountId") or account, p["QueueName"]
        else:
            owner, name = account, "*"
        return [(action, f"arn:aws:sqs:{call.region}:{owner}:{name}")]
    if call.service == "sagemaker-runtime":
        name = str(p["EndpointName"]).lower()  # SageMaker ARNs are lowercase
        need = [(action, f"arn:aws:sagemaker:{call.region}:{account}:endpoint/{name}")]
        if p.get("InferenceComponentName"):  # authorised on the component too
            component = str(p["InferenceComponentName"]).lower()
            arn = f"arn:aws:sagemaker:{call.region}:{account}:inference-component/{component}"
            need.append((action, arn))
        return need
    raise Unsupported(f"{call}: no resource mapping")


# -- matching -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{body}$", (re.IGNORECASE if ignore_case else 0) | re.DOTALL)


def _listed(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def statement_matches(st: dict[str, Any], action: str, arn: str) -> bool:
    unknown = set(st) - {"Sid", "Effect", "Action", "Resource"}
    if unknown:
        raise Unsupported(f"statement keys {sorted(unknown)} are not evaluated: {st}")
    if not any(_pattern(a, True).match(action) for a in _listed(st["Action"])):
        return False
    return any(_pattern(r, False).match(arn) for r in _listed(st["Resource"]))


def evaluate(statements: Iterable[dict[str, Any]], action: str, arn: str) -> bool:
    sts = list(statements)
    if any(s["Effect"] == "Deny" and statement_matches(s, action, arn) for s in sts):
        return False
    return any(s["Effect"] == "Allow" and statement_matches(s, action, arn) for s in sts)


# -- the translated, resolved template ------------------------------------------------------


class _ManagedPolicyLoader:
    def load(self) -> dict[str, str]:
        return {n: f"arn:aws:iam::aws:policy/service-role/{n}" for n in MANAGED}


def translate(text: str) -> dict[str, Any]:
    """The CloudFormation template ``sam deploy`` submits for ``text`` (offline)."""
    import os

    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    doc = yaml_parse(text)
    doc.setdefault("Globals", {}).setdefault("Function", {})["CodeUri"] = "s3://artifacts/x.zip"
    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = REGION
    try:
        out: dict[str, Any] = transform(copy.deepcopy(doc), {}, _ManagedPolicyLoader())
    finally:
        if saved is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved
    return out


class Stack:
    """A translated template resolved for one stack (STACK, ACCOUNT, REGION, PARAMETERS)."""

    def __init__(self, cfn: dict[str, Any], parameters: dict[str, str] | None = None) -> None:
        self.cfn = cfn
        self.resources: dict[str, Any] = cfn.get("Resources", {})
        params = {k: v.get("Default") for k, v in cfn.get("Parameters", {}).items()}
        self.params = {**params, **PARAMETERS, **(parameters or {})}
        self._conditions: dict[str, bool] = {}

    @classmethod
    @functools.cache
    def load(cls) -> Stack:
        return cls(translate(TEMPLATE.read_text()))

    @classmethod
    def from_text(cls, text: str) -> Stack:
        return cls(translate(text))

    # intrinsic functions
    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NOVALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                name, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.getatt(name, attr)
            if key == "Fn::Sub":
                return self.sub(arg)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if key == "Fn::Join":
                sep, items = arg
                return str(sep).join(str(v) for v in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition"):
                return self.truth(node)
            if key.startswith("Fn::"):
                raise Unsupported(f"{key} is not resolved")
        out = {}
        for k, v in node.items():
            value = self.resolve(v)
            if value is not NOVALUE:
                out[k] = value
        return out

    def truth(self, node: Any) -> bool:
        ((key, arg),) = node.items()
        if key == "Fn::Equals":
            a, b = (self.resolve(x) for x in arg)
            return bool(a == b)
        if key == "Fn::Not":
            return not self.truth(arg[0])
        if key == "Fn::And":
            return all(self.truth(x) for x in arg)
        if key == "Fn::Or":
            return any(self.truth(x) for x in arg)
        if key == "Condition":
            return self.condition(arg)
        raise Unsupported(f"condition {key}")

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = self.truth(self.cfn["Conditions"][name])
        return self._conditions[name]

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": STACK,
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NOVALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            value = self.params[name]
            kind = self.cfn.get("Parameters", {}).get(name, {}).get("Type")
            if kind == "CommaDelimitedList" and isinstance(value, str):
                return value.split(",")  # as CloudFormation hands a list parameter over
            return value
        res = self.resources.get(name)
        if res is None:
            raise Unsupported(f"Ref {name}")
        if res["Type"] == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{self.queue_name(name)}"
        if res["Type"] == "AWS::S3::Bucket":
            return self.resolve(res["Properties"]["BucketName"])
        return name

    def queue_name(self, logical: str) -> str:
        props = self.resources[logical].get("Properties", {})
        return str(self.resolve(props.get("QueueName", logical)))

    def getatt(self, name: str, attr: str) -> Any:
        res = self.resources[name]
        kind = res["Type"]
        if kind == "AWS::SQS::Queue":
            queue = self.queue_name(name)
            return {
                "QueueName": queue,
                "Arn": f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{queue}",
                "QueueUrl": self.ref(name),
            }[attr]
        if kind == "AWS::S3::Bucket" and attr == "Arn":
            return f"arn:{PARTITION}:s3:::{self.ref(name)}"
        if attr == "Arn":
            return f"arn:{PARTITION}:{kind.split('::')[1].lower()}:{REGION}:{ACCOUNT}:{name}"
        return f"{name}.{attr}"

    def sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        values = {k: self.resolve(v) for k, v in variables.items()}

        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in values:
                return str(values[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self.getatt(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    # functions and their roles
    def functions(self) -> list[str]:
        return [k for k, v in self.resources.items() if v["Type"] == "AWS::Lambda::Function"]

    @functools.cache  # noqa: B019 - one Stack per template, kept for the session
    def statements(self, function: str) -> list[dict[str, Any]]:
        fn = self.resources.get(function)
        if fn is None or fn["Type"] != "AWS::Lambda::Function":
            raise Unsupported(f"{function} is not a function of template.yaml")
        role_ref = fn["Properties"]["Role"]
        role = self.resources[role_ref["Fn::GetAtt"][0]]["Properties"]
        out: list[dict[str, Any]] = []
        for arn in self.resolve(role.get("ManagedPolicyArns", [])):
            name = str(arn).rsplit("/", 1)[-1]
            if name not in MANAGED:
                raise Unsupported(f"{function}: managed policy {arn} is not known here")
            out += MANAGED[name]
        for policy in self.resolve(role.get("Policies", [])):
            sts = policy["PolicyDocument"]["Statement"]
            out += sts if isinstance(sts, list) else [sts]
        return out

    def environment(self, function: str) -> dict[str, Any]:
        props = self.resources[function]["Properties"]
        env: dict[str, Any] = self.resolve(props.get("Environment", {})).get("Variables", {})
        return env

    def event_queues(self, function: str) -> list[str]:
        """Names of the SQS queues that trigger ``function``."""
        out = []
        for res in self.resources.values():
            if res["Type"] != "AWS::Lambda::EventSourceMapping":
                continue
            props = res["Properties"]
            if props.get("FunctionName") == {"Ref": function}:
                arn = str(self.resolve(props["EventSourceArn"]))
                out.append(arn.rsplit(":", 1)[-1])
        return out

    def event_buckets(self, function: str) -> list[str]:
        """Names of the buckets whose notifications invoke ``function``."""
        out = []
        for res in self.resources.values():
            if res["Type"] != "AWS::S3::Bucket":
                continue
            conf = res.get("Properties", {}).get("NotificationConfiguration", {})
            for lc in conf.get("LambdaConfigurations", []):
                if lc.get("Function") == {"Fn::GetAtt": [function, "Arn"]}:
                    out.append(str(self.resolve(res["Properties"]["BucketName"])))
        return out

    def dead_letter_queue(self, queue_name: str) -> str | None:
        for logical, res in self.resources.items():
            if res["Type"] == "AWS::SQS::Queue" and self.queue_name(logical) == queue_name:
                redrive = res.get("Properties", {}).get("RedrivePolicy")
                if redrive:
                    return str(self.resolve(redrive["deadLetterTargetArn"])).rsplit(":", 1)[-1]
        return None

    def buckets(self) -> set[str]:
        return {
            str(self.ref(k)) for k, v in self.resources.items() if v["Type"] == "AWS::S3::Bucket"
        }

    def queue_urls(self) -> dict[str, str]:
        return {
            str(self.ref(k)): self.queue_name(k)
            for k, v in self.resources.items()
            if v["Type"] == "AWS::SQS::Queue"
        }

    def allows(self, function: str, action: str, arn: str) -> bool:
        return evaluate(self.statements(function), action, arn)


# -- test names -> stack names --------------------------------------------------------------


@dataclass
class Names:
    """What the names a test used stand for in the stack (several candidates allowed)."""

    buckets: dict[str, set[str]] = field(default_factory=dict)
    queues: dict[str, set[str]] = field(default_factory=dict)
    endpoints: dict[str, set[str]] = field(default_factory=dict)  # test ARN -> stack ARN

    def add(self, table: dict[str, set[str]], test: str, stack: str) -> None:
        table.setdefault(test, set()).add(stack)


def bind(stack: Stack, function: str, env: dict[str, str], event: Any, calls: list[Call]) -> Names:
    """Map the test's resource names to the stack's, the way a deployment ties them together:
    the function's environment (template value vs the test's value), its event source (the
    queue or bucket that triggers it), and a queue's redrive target (as the code discovered
    it through GetQueueAttributes)."""
    names = Names()
    buckets, urls = stack.buckets(), stack.queue_urls()
    for var, value in stack.environment(function).items():
        test = env.get(var)
        if not test:
            continue
        if value in buckets:
            names.add(names.buckets, test, str(value))
        elif value in urls:
            with _suppress_unsupported():
                names.add(names.queues, queue_from_url(test)[1], urls[value])
    if "SageMakerEndpointArn" in stack.params and env.get("INFER_BACKENDS"):
        with _suppress_unsupported():
            backends = [b for b in json.loads(env["INFER_BACKENDS"])
                        if isinstance(b, dict) and b.get("kind") == "sagemaker"]  # fmt: skip
            granted = [str(a) for a in stack.ref("SageMakerEndpointArn") if a]
            for kind, field_name in (("endpoint", "endpoint_name"),
                                     ("inference-component", "inference_component")):  # fmt: skip
                used = {(str(b.get("region") or REGION), str(b[field_name]).lower())
                        for b in backends if b.get(field_name)}  # fmt: skip
                stack_arns = [a for a in granted if f":{kind}/" in a]
                # the template grants these; a test that uses more of them than are granted
                # maps only the one of each kind, so the extra ones are denied
                if len(used) == 1 and len(stack_arns) == 1:
                    ((region, name),) = used
                    test_arn = f"arn:aws:sagemaker:{region}:{ACCOUNT}:{kind}/{name}"
                    names.add(names.endpoints, test_arn, stack_arns[0])
    records = event.get("Records", []) if isinstance(event, dict) else []
    for rec in records if isinstance(records, list) else []:
        if not isinstance(rec, dict):
            continue
        if rec.get("eventSourceARN") and str(rec.get("eventSource")) == "aws:sqs":
            for q in stack.event_queues(function):
                names.add(names.queues, str(rec["eventSourceARN"]).rsplit(":", 1)[-1], q)
        bucket = rec.get("s3", {}).get("bucket", {}).get("name") if "s3" in rec else None
        if bucket:
            for b in stack.event_buckets(function):
                names.add(names.buckets, str(bucket), b)
    for call in calls:  # a queue's DLQ, as the code found it
        policy = call.response.get("Attributes", {}).get("RedrivePolicy")
        if call.operation == "GetQueueAttributes" and policy and "QueueUrl" in call.params:
            test_queue = queue_from_url(call.params["QueueUrl"])[1]
            test_dlq = str(json.loads(policy)["deadLetterTargetArn"]).rsplit(":", 1)[-1]
            for q in names.queues.get(test_queue, set()):
                dlq = stack.dead_letter_queue(q)
                if dlq:
                    names.add(names.queues, test_dlq, dlq)
    return names


class _suppress_unsupported:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, Unsupported | ValueError | KeyError)


def candidates(arn: str, names: Names) -> list[str]:
    """The stack ARNs a test ARN stands for (itself when nothing maps it)."""
    if arn.startswith("arn:aws:s3:::"):
        bucket, slash, key = arn[len("arn:aws:s3:::") :].partition("/")
        return [f"arn:aws:s3:::{b}{slash}{key}" for b in names.buckets.get(bucket, {bucket})]
    if arn.startswith("arn:aws:sqs:"):
        name = arn.rsplit(":", 1)[-1]
        mapped = names.queues.get(name)
        return sorted(f"arn:aws:sqs:{REGION}:{ACCOUNT}:{q}" for q in mapped) if mapped else [arn]
    if arn.startswith("arn:aws:sagemaker:"):
        return sorted(names.endpoints.get(arn, {arn}))
    return [arn]


def violations(calls: list[Call], stack: Stack | None = None) -> list[str]:
    """Every call a function made that its role in template.yaml would not allow."""
    stack = stack or Stack.load()
    out: list[str] = []
    by_frame: dict[int, list[Call]] = {}
    frames: dict[int, Any] = {}
    for call in calls:
        if call.function is None:
            continue
        by_frame.setdefault(id(call.frame), []).append(call)
        frames[id(call.frame)] = call.frame
    for key, group in by_frame.items():
        frame = frames[key]
        function = group[0].function
        assert function is not None
        try:
            names = bind(stack, function, frame.env, frame.event, group)
        except Unsupported as exc:
            out.append(f"{function}: {exc}")
            continue
        for call in group:
            try:
                for action, arn in required(call):
                    if not any(stack.allows(function, action, c) for c in candidates(arn, names)):
                        shown = ", ".join(candidates(arn, names))
                        out.append(
                            f"{function}: {call} needs {action} on {shown} (the test's {arn}); "
                            "template.yaml does not grant it"
                        )
            except Unsupported as exc:
                out.append(f"{function}: {exc}")
    return sorted(set(out))
