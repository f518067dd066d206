"""Overhead of each backend kind: the chat function vs calling its gpusim protocol directly.

For each kind (openai, azure_openai with managed identity, azureml with managed identity,
sagemaker with SigV4 through boto3) the same gpusim serves both paths; the function runs
under uvicorn (functions.chat.app, the Lambda Web Adapter path) with INFER_BACKENDS set to
that kind. Sequential plain requests, p50 of each path and the difference, side by side in
one run. Writes bench/results/overhead_kinds.json.

    python -m bench.overhead_kinds [--requests 100]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.common import PYTHON, ServerProcess, free_port, summary, write_result

KEY = "bench-azure-key"
SIGNING = "bench-signing-key-0123456789abcdef0123"
HEADER = "bench-identity-header"
MESSAGES = [{"role": "user", "content": "Tell me a story"}]
BODY = {"model": "m", "messages": MESSAGES, "max_tokens": 16}


def start(
    argv: list[str],
    port: int,
    name: str,
    env: dict[str, str] | None = None,
    ready: str | None = "/health",
) -> ServerProcess:
    return ServerProcess(argv, port, ready_path=ready, env=env, name=name).start()


def timed(call: Callable[[], None], n: int) -> list[float]:
    for _ in range(10):
        call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    ip, sp = free_port(), free_port()
    identity = start(
        [
            PYTHON,
            "-m",
            "tools.identity",
            "--port",
            str(ip),
            "--identity-header",
            HEADER,
            "--signing-key",
            SIGNING,
        ],
        ip,
        "bench-identity",
    )
    sim = start(
        [
            PYTHON,
            "-m",
            "tools.gpusim",
            "--port",
            str(sp),
            "--models",
            "*",
            "--no-access-log",
            "--identity-signing-key",
            SIGNING,
            "--azure-api-keys",
            KEY,
            "--aws-access-key-id",
            "testing",
            "--aws-secret-access-key",
            "testing",
            "--ttft-base-ms",
            "20",
            "--prefill-ms-per-token",
            "0",
            "--itl-ms",
            "2",
            "--batch-slowdown",
            "0",
            "--min-output-tokens",
            "16",
            "--max-output-tokens",
            "16",
        ],
        sp,
        "bench-cloudsim",
    )
    env = {
        "IDENTITY_ENDPOINT": identity.url + "/msi/token",
        "IDENTITY_HEADER": HEADER,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    import boto3
    from botocore.config import Config

    sm = boto3.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        endpoint_url=sim.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )
    http = httpx.Client(timeout=30)
    raw = json.dumps(BODY)
    kinds: dict[str, tuple[dict[str, Any], Callable[[], None]]] = {
        "openai": (
            {"kind": "openai", "base_url": sim.url + "/v1"},
            lambda: http.post(
                sim.url + "/v1/chat/completions",
                content=raw,
                headers={"content-type": "application/json"},
            ).raise_for_status(),
        ),
        "azure_openai": (
            {
                "kind": "azure_openai",
                "endpoint": sim.url,
                "deployment": "m",
                "api_version": "2024-10-21",
            },
            lambda: http.post(
                sim.url + "/openai/deployments/m/chat/completions?api-version=2024-10-21",
                content=raw,
                headers={"content-type": "application/json", "api-key": KEY},
            ).raise_for_status(),
        ),
        "azureml": (
            {"kind": "azureml", "scoring_url": sim.url + "/score", "deployment": "blue"},
            lambda: http.post(
                sim.url + "/score",
                content=raw,
                headers={
                    "content-type": "application/json",
                    "authorization": f"Bearer {KEY}",
                    "azureml-model-deployment": "blue",
                },
            ).raise_for_status(),
        ),
        "sagemaker": (
            {
                "kind": "sagemaker",
                "endpoint_name": "llm",
                "region": "us-east-1",
                "endpoint_url": sim.url,
            },
            lambda: (
                sm.invoke_endpoint(
                    EndpointName="llm", ContentType="application/json", Body=raw.encode()
                )["Body"].read()
                and None
            ),
        ),
    }
    results: dict[str, Any] = {}
    try:
        for kind, (backend, direct) in kinds.items():
            port = free_port()
            fenv = {**env, "INFER_BACKENDS": json.dumps([{"name": kind, **backend}])}
            fn = start(
                [
                    PYTHON,
                    "-m",
                    "uvicorn",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    "functions.chat.app:app",
                ],
                port,
                f"bench-fn-{kind}",
                fenv,
                None,
            )
            try:
                url = fn.url + "/v1/chat/completions"
                via = timed(
                    lambda url=url: http.post(
                        url, content=raw, headers={"content-type": "application/json"}
                    ).raise_for_status(),
                    args.requests,
                )
                dir_ = timed(direct, args.requests)
            finally:
                fn.stop()
            results[kind] = {
                "direct_ms": summary(dir_),
                "function_ms": summary(via),
                "added_p50_ms": round(summary(via)["p50"] - summary(dir_)["p50"], 3),
            }
            print(kind, json.dumps(results[kind]["added_p50_ms"]))
    finally:
        sim.stop()
        identity.stop()
    write_result("overhead_kinds", {"requests": args.requests, "kinds": results})


if __name__ == "__main__":
    main()
