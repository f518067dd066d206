"""Measure one handler's cold start in THIS (fresh) interpreter; print one JSON line.

    python bench/probe.py --import functions.chat.aws --invoke aws
    python bench/probe.py --import fastapi,mangum,httpx,pydantic      # the bare floor

Times the import of the given modules, then (with --invoke) the first invocation, which
builds the settings, the router and the HTTP client against INFER_BACKENDS (gpusim). Also
reports peak RSS and which heavy packages got imported (a function whose backend is
OpenAI-compatible must not pay for boto3, azure-identity or openai). Used by tests/perf
and bench/coldstart.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "openai",
    "boto3",
    "botocore",
    "azure.identity",
    "azure.storage",
    "aws_lambda_powertools",
    # telemetry: only when an exporter is configured (fastapi imports the OTel *API* itself)
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "azure.monitor",
    "prometheus_client",
    "google.protobuf",
    "requests",
    "redis",
    "redisvl",
    "jwt",
    "numpy",
    "shared.cache.base",
    # the settings are read by shared.settings.EnvSettings; the backends' client is httpx2
    "pydantic_settings",
    "httpx",
)
CHAT = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 8,
}


class _LambdaContext:
    aws_request_id = "probe"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _aws_event(path: str, method: str, body: dict[str, Any] | None) -> dict[str, Any]:
    raw = json.dumps(body) if body is not None else None
    headers = {"host": "probe.execute-api.us-east-1.amazonaws.com"}
    if raw is not None:
        headers |= {"content-type": "application/json", "content-length": str(len(raw))}
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "probe",
            "domainName": "probe.execute-api.us-east-1.amazonaws.com",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "probe",
            },
            "requestId": "probe",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "timeEpoch": 0,
        },
        "body": raw,
        "isBase64Encoded": False,
    }


ROUTES = {
    "functions.chat": ("/v1/chat/completions", "POST", CHAT),
    "functions.completions": (
        "/v1/completions",
        "POST",
        {"model": "local-model", "prompt": "hi", "max_tokens": 8},
    ),
    "functions.embeddings": ("/v1/embeddings", "POST", {"model": "local-model", "input": "hi"}),
    "functions.models": ("/v1/models", "GET", None),
    "functions.health": ("/healthz", "GET", None),
}


def invoke_aws(module: Any, name: str) -> int:
    path, method, body = ROUTES[name.rsplit(".", 1)[0]]
    out = module.handler(_aws_event(path, method, body), _LambdaContext())
    return int(out["statusCode"])


def invoke_azure(module: Any) -> int:
    from starlette.requests import Request

    fn = next(f for f in module.app.get_functions() if f.get_function_name() == "chat")
    body = json.dumps(CHAT).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/chat/completions",
        "raw_path": b"/api/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "http_version": "1.1",
        "scheme": "http",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 7071),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def run() -> int:
        response = await fn.get_user_function()(Request(scope, receive))
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await response(scope, receive, send)
        return status

    return asyncio.run(run())


def peak_rss_mb() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: the latter survives exec and so
    reports the forking parent's size when the probe is started from a big process (pytest)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--import", dest="modules", required=True, help="comma-separated modules")
    parser.add_argument("--invoke", choices=["none", "aws", "azure"], default="none")
    parser.add_argument("--heavy-ok", default="", help="heavy modules expected (telemetry on)")
    args = parser.parse_args()
    # Run as a script, sys.path[0] is bench/, whose queue.py would shadow the stdlib's.
    sys.path[0] = str(ROOT)
    t0 = time.perf_counter()
    loaded = [importlib.import_module(m) for m in args.modules.split(",")]
    t1 = time.perf_counter()
    status = None
    if args.invoke == "aws":
        status = invoke_aws(loaded[0], args.modules)
    elif args.invoke == "azure":
        status = invoke_azure(loaded[0])
    t2 = time.perf_counter()
    rss_mb = peak_rss_mb()
    heavy = sorted(h for h in HEAVY if h in sys.modules)
    if args.heavy_ok:
        heavy = [h for h in heavy if h not in args.heavy_ok.split(",")]
    print(
        json.dumps(
            {
                "modules": args.modules,
                "invoke": args.invoke,
                "status": status,
                "import_s": round(t1 - t0, 4),
                "invoke_s": round(t2 - t1, 4),
                "total_s": round(t2 - t0, 4),
                "rss_mb": round(rss_mb, 1),
                "heavy_modules": heavy,
            }
        )
    )


if __name__ == "__main__":
    main()
