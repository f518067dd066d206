"""Check an artifact from its unpacked zip alone, each check in a fresh isolated interpreter.

For every handler module: import it with only the unpacked folder and the standard library
importable, and time the import. Then answer a chat request through the platform entry
point against an OpenAI-compatible backend (gpusim by default): Azure through
``function_app``'s registered chat function, AWS through ``functions.chat.aws.handler`` with
an API Gateway HTTP API v2 event, and the streaming chat through ``lambda_stream.sh``
(the script the Lambda Web Adapter starts) over real HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tools.package.artifacts import ArtifactSpec
from tools.package.zipper import extract_zip

PROBE = Path(__file__).with_name("probe.py")
ROOT = Path(__file__).resolve().parents[2]


class VerifyError(RuntimeError):
    """The artifact did not import or did not answer from its unpacked zip alone."""


@dataclass
class VerifyReport:
    artifact: str
    import_seconds: dict[str, float] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"  import {m}: {s * 1000:.0f} ms" for m, s in self.import_seconds.items()]
        for name, answer in self.answers.items():
            out.append(f"  {name}: HTTP {answer.get('status')}")
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backends_json(base_url: str) -> str:
    """INFER_BACKENDS for one OpenAI-compatible backend at ``base_url``."""
    return json.dumps([{"name": "sim", "kind": "openai", "base_url": base_url}])


def probe_env(base_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no developer credentials, no PYTHONPATH, the backend under test."""
    keep = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        {
            "INFER_BACKENDS": backends_json(base_url),
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "INFER_BUCKET": "packaged-artifact-probe",
            "INFER_QUEUE_URL": "http://127.0.0.1:9/123456789012/inference-requests",
        }
    )
    env.update(extra or {})
    return env


def import_paths(spec: ArtifactSpec, unpacked: Path) -> list[Path]:
    """Where the platform's Python worker looks for code and dependencies in the artifact."""
    if spec.deps_prefix:
        return [unpacked, unpacked / spec.deps_prefix]
    return [unpacked]


def handler_modules(spec: ArtifactSpec, unpacked: Path) -> list[str]:
    """Every module a platform imports as an entry point from this artifact."""
    functions = unpacked / "functions"
    names = sorted(p.name for p in functions.iterdir() if p.is_dir()) if functions.is_dir() else []
    if spec.deps_prefix:  # Azure: the worker indexes function_app, which imports the blueprints
        mods = ["function_app"]
        mods += [f"functions.{n}.azure" for n in names if (functions / n / "azure.py").is_file()]
        return mods
    mods = [f"functions.{n}.aws" for n in names if (functions / n / "aws.py").is_file()]
    if (functions / "chat" / "app.py").is_file():
        mods.append("functions.chat.app")  # served by uvicorn behind the Lambda Web Adapter
    return mods


def run_probe(
    paths: list[Path], args: list[str], env: Mapping[str, str], timeout: float = 60.0
) -> dict[str, Any]:
    argv = [sys.executable, "-I", "-S", "-B", str(PROBE)]
    for p in paths:
        argv += ["--path", str(p)]
    proc = subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=timeout,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    if proc.returncode != 0:
        raise VerifyError(
            f"probe {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("foreign_modules"):
        raise VerifyError(
            f"probe {' '.join(args)} loaded modules from outside the artifact: "
            f"{result['foreign_modules'][:10]}"
        )
    return result


def _check_chat_json(name: str, answer: dict[str, Any]) -> None:
    if answer.get("status") != 200:
        raise VerifyError(f"{name}: HTTP {answer.get('status')}: {str(answer.get('body'))[:500]}")
    body = json.loads(answer["body"])
    content = body["choices"][0]["message"]["content"]
    if body.get("object") != "chat.completion" or not content:
        raise VerifyError(f"{name}: not a chat completion: {answer['body'][:500]}")


def _check_sse(name: str, status: int, text: str) -> None:
    if status != 200 or "chat.completion.chunk" not in text or "data: [DONE]" not in text:
        raise VerifyError(f"{name}: HTTP {status}, not an SSE chat stream: {text[:500]}")


@contextlib.contextmanager
def lambda_stream_server(unpacked: Path, base_url: str, timeout: float = 30.0) -> Iterator[str]:
    """Run the artifact's ``lambda_stream.sh`` as the Lambda Web Adapter would; yield its URL.

    ``python3`` on PATH is an interpreter without site-packages, so uvicorn, FastAPI and the
    app all come from the unpacked zip, as on Lambda.
    """
    script = unpacked / "functions" / "chat" / "lambda_stream.sh"
    if not os.access(script, os.X_OK):
        raise VerifyError(f"{script} is not executable in the artifact")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lwa-shim-") as shim:
        py = Path(shim) / "python3"
        py.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -s -B "$@"\n')
        py.chmod(0o755)
        env = probe_env(base_url, {"LAMBDA_TASK_ROOT": str(unpacked), "PORT": str(port)})
        env["PATH"] = f"{shim}:{env.get('PATH', '/usr/bin:/bin')}"
        log = Path(shim) / "server.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [str(script)],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise VerifyError(
                        f"lambda_stream.sh exited {proc.returncode}:\n{log.read_text()}"
                    )
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise VerifyError(f"lambda_stream.sh not listening after {timeout}s")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()


def stream_chat(url: str, model: str = "local-model") -> tuple[int, str]:
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Stream from the packaged artifact."}],
    }
    with httpx2.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30.0) as r:
        return r.status_code, "".join(r.iter_text())


def verify_unpacked(spec: ArtifactSpec, unpacked: Path, base_url: str) -> VerifyReport:
    report = VerifyReport(spec.name)
    paths = import_paths(spec, unpacked)
    env = probe_env(base_url)
    modules = handler_modules(spec, unpacked)
    if not modules:
        raise VerifyError(f"{spec.filename} contains no handler module")
    for module in modules:
        report.import_seconds[module] = run_probe(paths, ["import", module], env)["seconds"]
    if spec.deps_prefix:
        answer = run_probe(paths, ["azure-chat"], env)
        _check_chat_json("azure chat", answer)
        report.answers["azure chat"] = answer
        answer = run_probe(paths, ["azure-chat", "--stream"], env)
        _check_sse("azure chat stream", answer["status"], answer["body"])
        report.answers["azure chat stream"] = answer
    else:
        answer = run_probe(paths, ["aws-chat"], env)
        _check_chat_json("aws chat (HttpApi + Mangum)", answer)
        report.answers["aws chat (HttpApi + Mangum)"] = answer
        with lambda_stream_server(unpacked, base_url) as url:
            status, text = stream_chat(url)
        _check_sse("aws chat stream (lambda_stream.sh)", status, text)
        report.answers["aws chat stream (lambda_stream.sh)"] = {"status": status, "body": text}
    return report


def verify_artifact(spec: ArtifactSpec, zip_path: Path, base_url: str) -> VerifyReport:
    """Unpack ``zip_path`` into an empty folder and check it there."""
    with tempfile.TemporaryDirectory(prefix=f"verify-{spec.name}-") as tmp:
        unpacked = Path(tmp)
        extract_zip(zip_path, unpacked)
        return verify_unpacked(spec, unpacked, base_url)


@contextlib.contextmanager
def gpusim(timeout: float = 60.0) -> Iterator[str]:
    """Start ``python -m tools.gpusim`` on a free port; yield its OpenAI base URL."""
    if not (ROOT / "tools" / "gpusim").exists():
        raise VerifyError("tools/gpusim is missing: pass --backend-url to verify against a server")
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="package-gpusim-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.gpusim", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise VerifyError(f"gpusim exited {proc.returncode}: {Path(log.name).read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise VerifyError(f"gpusim not listening after {timeout}s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
        log.close()
        os.unlink(log.name)
