"""Import-time and memory budgets per handler, in a fresh interpreter (generous margins).

Cold start is a product feature: a handler whose backends are OpenAI-compatible must not
import boto3, azure-identity, azure-storage or openai, and must stay near the cost of the
packages it cannot avoid (fastapi, mangum, httpx, pydantic), measured in the same test.
The response cache loads its modules only when ``INFER_CACHE`` asks for it, and redis /
redisvl only in the modes that use them.
The precise figures come from `make bench` (bench/coldstart.py); these guard regressions.
"""

from __future__ import annotations

import ast
import json
import subprocess
from typing import Any

import pytest

from tests.fixtures.gpusim import Gpusim
from tests.fixtures.otlp import Receiver
from tests.fixtures.procs import PYTHON, ROOT

IMPORT_BUDGET_S = 3.0  # absolute, for a slow CI machine (measured ~0.5 s here)
RATIO_BUDGET = 1.5  # x the bare floor measured in the same test (target 1.15, see bench)
RSS_BUDGET_MB = 65.0  # target 60 MB (measured ~48 MB)
#: What telemetry may import once an exporter is configured (and only then).
TELEMETRY_MODULES = "opentelemetry.sdk,opentelemetry.exporter,google.protobuf,requests"

HANDLERS = [
    ("functions.chat.aws", "aws"),
    ("functions.completions.aws", "aws"),
    ("functions.embeddings.aws", "aws"),
    ("functions.models.aws", "aws"),
    ("functions.health.aws", "aws"),
    ("function_app", "azure"),
]


@pytest.fixture(scope="module", autouse=True)
def project_bytecode() -> None:
    """Artifacts ship bytecode and site-packages has it: compile ours so both sides match."""
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", "shared", "functions", "function_app.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


def probe(modules: str, invoke: str, sim: Gpusim, **extra_env: str) -> dict[str, Any]:
    env = {
        "PATH": "/usr/bin:/bin",
        "INFER_BACKENDS": json.dumps([{"name": "sim", "kind": "openai", "base_url": sim.v1}]),
        **extra_env,
    }
    heavy_ok = ["--heavy-ok", TELEMETRY_MODULES] if extra_env else []
    out = subprocess.run(
        [
            PYTHON,
            str(ROOT / "bench" / "probe.py"),
            "--import",
            modules,
            "--invoke",
            invoke,
            *heavy_ok,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def floor_s(gpusim_server: Gpusim) -> float:
    runs = [
        probe("fastapi,mangum,httpx,pydantic", "none", gpusim_server)["total_s"] for _ in range(3)
    ]
    return min(runs)


@pytest.mark.parametrize(("module", "invoke"), HANDLERS)
def test_handler_cold_start_within_budget(module: str, invoke: str, gpusim_server: Gpusim) -> None:
    # Floor and handler alternate, best of three each, so load on the machine hits both; a
    # best over the ratio budget gets three more of each first (a load spike on a 2-core
    # machine can cover three runs; a real regression covers six).
    runs: list[dict[str, Any]] = []
    floors: list[float] = []
    for _ in range(2):
        for _ in range(3):
            floors.append(probe("fastapi,mangum,httpx,pydantic", "none", gpusim_server)["total_s"])
            runs.append(probe(module, invoke, gpusim_server))
        floor_s = min(floors)
        best = min(runs, key=lambda r: r["total_s"])
        if invoke != "aws" or best["total_s"] <= RATIO_BUDGET * floor_s:
            break
    assert best["status"] == 200
    assert best["heavy_modules"] == [], f"{module} pulled in {best['heavy_modules']}"
    assert best["rss_mb"] <= RSS_BUDGET_MB, best
    assert best["total_s"] <= IMPORT_BUDGET_S, best
    if invoke == "aws":  # the Azure worker has azure.functions loaded already; see bench
        assert best["total_s"] <= RATIO_BUDGET * floor_s, (best, floor_s)


def test_cold_start_with_otlp_telemetry_on_flushes_and_stays_in_budget(
    gpusim_server: Gpusim, otlp_receiver: Receiver
) -> None:
    """Telemetry on (OTLP): the same handler, side by side with it off. The first
    invocation exports its spans and metrics before it returns; the absolute budget holds
    (the added cost is measured by bench/telemetry.py)."""
    on_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url}
    off, on = [], []
    for _ in range(2):
        off.append(probe("functions.chat.aws", "aws", gpusim_server))
        on.append(probe("functions.chat.aws", "aws", gpusim_server, **on_env))
    best_on = min(on, key=lambda r: r["total_s"])
    best_off = min(r["total_s"] for r in off)
    assert all(r["status"] == 200 for r in off + on)
    assert best_on["total_s"] <= RATIO_BUDGET * best_off, (best_on, best_off)
    assert best_on["heavy_modules"] == [], best_on  # nothing beyond the telemetry stack
    names = {s["name"] for s in otlp_receiver.spans()}
    assert names == {"chat local-model"}
    assert {p.name for p in otlp_receiver.metrics()} >= {"gen_ai.server.request.duration"}


#: Platform SDKs and adapters (any submodule): never imported by importing shared/.
PLATFORM_SDKS = ("azure", "aws_lambda_powertools", "boto3", "botocore", "mangum", "openai")
CORE_MODULES = "shared.service,shared.web,shared.router,shared.settings,shared.batch,shared.probe"


def test_shared_imports_no_platform_sdk() -> None:
    """Importing shared/ (every module of shared/jobs/ included, and the platform glue in
    shared/platform/ itself) loads no platform SDK; the core does not load the glue."""
    code = f"""
import importlib, json, pkgutil, sys
import shared.jobs
def sdks():
    return sorted(m for m in sys.modules if m.split(".")[0] in {PLATFORM_SDKS!r})
core = "{CORE_MODULES}".split(",") + [
    m.name for m in pkgutil.walk_packages(shared.jobs.__path__, "shared.jobs.")]
for name in core:
    importlib.import_module(name)
out = {{"core": core, "core_sdks": sdks(),
        "glue_loaded": sorted(m for m in sys.modules if m.startswith("shared.platform"))}}
importlib.import_module("shared.platform.aws")
importlib.import_module("shared.platform.azure")
out["glue_sdks"] = sdks()
print(json.dumps(out))
"""
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"shared.jobs.worker", "shared.jobs.queue_runtime", "shared.jobs.http"} <= set(
        found["core"]
    )
    assert found["core_sdks"] == [], found
    assert found["glue_loaded"] == [], found
    assert found["glue_sdks"] == [], found


def test_only_the_adapters_import_the_platform_glue() -> None:
    """``shared.platform`` is imported by functions/ only: no module of the core imports it,
    not even inside a function (where the import-time check above cannot see it)."""
    offenders = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        if path.is_relative_to(ROOT / "shared" / "platform"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "shared.platform" or n.startswith("shared.platform.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


CACHE_CASES = [
    # (INFER_CACHE, which Redis, the controls' modules the first chat invocation may load)
    ("", None, []),
    ('{"mode": "off"}', None, []),
    ('{"mode": "exact"}', None, ["shared.cache.base"]),
    ('{"mode": "exact"}', "redis", ["redis", "shared.cache.base"]),
    (
        '{"mode": "semantic", "semantic": {"embeddings_model": "local-model"}}',
        "redis_stack",
        ["redis", "redisvl", "shared.cache.base"],
    ),
]


@pytest.mark.parametrize(("cache", "server", "expected"), CACHE_CASES)
def test_the_cache_imports_only_what_its_mode_uses(
    cache: str,
    server: str | None,
    expected: list[str],
    gpusim_server: Gpusim,
    request: pytest.FixtureRequest,
) -> None:
    env = {"INFER_CACHE": cache} if cache else {}
    if server is not None:
        env["INFER_STATE_URL"] = request.getfixturevalue(f"{server}_url")
    result = probe("functions.chat.aws", "aws", gpusim_server, **env)
    assert result["status"] == 200
    assert result["heavy_modules"] == expected, result


LIMITS = json.dumps([{"caller": "*", "rpm": 1000, "tpm": 100000}])


def test_controls_import_only_what_they_use(gpusim_server: Gpusim, redis_url: str) -> None:
    """No controls: none of redis/redisvl/jwt (checked above, HEAVY). In-process limits:
    still none. Limits in Redis: redis, never jwt. JWT callers: jwt, never redis."""
    local = probe("functions.chat.aws", "aws", gpusim_server, INFER_LIMITS=LIMITS)
    assert local["status"] == 200 and local["heavy_modules"] == [], local
    shared_state = probe(
        "functions.chat.aws",
        "aws",
        gpusim_server,
        INFER_LIMITS=LIMITS,
        INFER_STATE_URL=redis_url,
    )
    assert shared_state["status"] == 200
    assert shared_state["heavy_modules"] == ["redis"], shared_state
    jwt_only = probe(
        "functions.chat.aws",
        "aws",
        gpusim_server,
        INFER_JWT=json.dumps({"issuer": "https://issuer.example", "audience": "api://x"}),
    )
    assert jwt_only["status"] == 401  # no token sent: refused, without fetching any key
    assert jwt_only["heavy_modules"] == [], jwt_only  # jwt is imported only to check a token
