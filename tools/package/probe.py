"""Runs inside a fresh, isolated interpreter against an unpacked artifact.

Started as ``python -I -S -B probe.py --path DIR ... COMMAND`` so that only the standard
library and the given folders are importable: a module the artifact forgot to ship fails
here instead of in the cloud. ``-B`` writes no bytecode, so every run imports cold, as on
Lambda's read-only /var/task and Azure's run-from-package mount. Prints one JSON object on
stdout. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

CHAT_ROUTE = "v1/chat/completions"


def _isolate(paths: list[str]) -> list[str]:
    stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    kept = [p for p in sys.path if p.endswith(".zip") or any(p.startswith(s) for s in stdlib)]
    sys.path[:] = [*paths, *kept]
    return [*paths, *sorted(stdlib)]


def _foreign_modules(allowed: list[str]) -> list[str]:
    """Loaded modules whose file lies outside the artifact and the standard library."""
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve() == Path(__file__).resolve():
            continue  # the probe itself (__main__)
        if f and not any(
            str(Path(f).resolve()).startswith(str(Path(a).resolve())) for a in allowed
        ):
            out.append(f"{name} ({f})")
    return sorted(out)


def _chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello from the packaged artifact."}],
        "max_tokens": 16,
        "stream": stream,
    }
    return json.dumps(body).encode()


async def _drain(response: Any) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of whatever the Azure function returned."""
    if hasattr(response, "body_iterator"):
        chunks = []
        async for chunk in response.body_iterator:
            chunks.append(chunk if isinstance(chunk, bytes) else str(chunk).encode())
        body = b"".join(chunks)
    elif hasattr(response, "get_body"):
        body = response.get_body()
    else:
        body = bytes(response.body)
    status = getattr(response, "status_code", 0)
    headers = {str(k).lower(): str(v) for k, v in dict(response.headers).items()}
    return int(status), headers, body


async def _azure_chat(model: str, stream: bool) -> dict[str, Any]:
    function_app = importlib.import_module("function_app")
    requests = importlib.import_module("starlette.requests")
    chat = None
    for fn in function_app.app.get_functions():
        for binding in fn.get_bindings_dict().get("bindings", []):
            if binding.get("type") == "httpTrigger" and binding.get("route") == CHAT_ROUTE:
                chat = (fn, binding["name"])
    if chat is None:
        raise SystemExit(f"no httpTrigger function with route {CHAT_ROUTE!r} in function_app")
    fn, arg_name = chat
    body = _chat_body(model, stream)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/api/{CHAT_ROUTE}",
        "raw_path": f"/api/{CHAT_ROUTE}".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"localhost:7071"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 7071),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    request = requests.Request(scope, receive)
    result = fn.get_user_function()(**{arg_name: request})
    if inspect.isawaitable(result):
        result = await result
    status, headers, raw = await _drain(result)
    return {
        "function": fn.get_function_name(),
        "status": status,
        "headers": headers,
        "body": raw.decode("utf-8", "replace"),
    }


class _LambdaContext:
    """The attributes of the Lambda context object the handlers read."""

    function_name = "chat"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:chat"
    memory_limit_in_mb = 512
    aws_request_id = "probe-request-1"
    log_group_name = "/aws/lambda/chat"
    log_stream_name = "probe"

    def __init__(self, budget_s: float) -> None:
        self._deadline = time.monotonic() + budget_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _aws_chat(model: str) -> dict[str, Any]:
    handler = importlib.import_module("functions.chat.aws").handler
    body = _chat_body(model, stream=False).decode()
    path = f"/{CHAT_ROUTE}"
    event = {
        "version": "2.0",
        "routeKey": f"POST {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "content-length": str(len(body)),
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "tools.package.probe",
            },
            "requestId": "probe-1",
            "routeKey": f"POST {path}",
            "stage": "$default",
            "time": "01/Jan/2025:00:00:00 +0000",
            "timeEpoch": 1735689600000,
        },
        "body": body,
        "isBase64Encoded": False,
    }
    out = handler(event, _LambdaContext(29.0))
    return {
        "status": out.get("statusCode"),
        "headers": out.get("headers", {}),
        "body": out.get("body", ""),
        "isBase64Encoded": out.get("isBase64Encoded", False),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", action="append", default=[], help="importable folder")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import")
    imp.add_argument("module")
    az = sub.add_parser("azure-chat")
    az.add_argument("--model", default="local-model")
    az.add_argument("--stream", action="store_true")
    aws = sub.add_parser("aws-chat")
    aws.add_argument("--model", default="local-model")
    args = parser.parse_args()

    allowed = _isolate(args.path)
    result: dict[str, Any]
    if args.command == "import":
        start = time.perf_counter()
        importlib.import_module(args.module)
        result = {"module": args.module, "seconds": time.perf_counter() - start}
    elif args.command == "azure-chat":
        result = asyncio.run(_azure_chat(args.model, args.stream))
    else:
        result = _aws_chat(args.model)
    result["foreign_modules"] = _foreign_modules(allowed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
