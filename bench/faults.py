"""Which endpoint faults a streamed chat survives, and what each costs the caller in time.

Three gpusim replicas with one seed (so each gives the same answer to the same prompt) sit
behind devhost as ``primary``, ``middle`` (it refuses a partial assistant message, as a
server without ``continue_final_message``) and ``last``. For each fault, posted to the
primary, a streamed chat (64 tokens, ``include_usage``) is *rescued* when the caller gets
the answer no fault touched, text and usage, in one stream ending in ``[DONE]``; a content
policy refusal is rescued when it is a clean 400 with the provider's reason. Each fault runs
``--repeat`` times; the figures are the median time to the last byte and to the first token,
next to the fault-free stream's.

``--base-ref REF`` runs the same faults against the product code of an earlier commit (a
temporary git worktree, its own devhost; gpusim and this harness stay this tree's), so the
JSON holds both, side by side. Writes bench/results/faults.json and faults.png.

    python -m bench.faults [--repeat 3] [--base-ref cd3e32a]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    PYTHON,
    RESULTS,
    ROOT,
    ServerProcess,
    free_port,
    gpusim,
    worktree,
    write_result,
)

TOKENS = 64
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "Tell me about the river and the lantern."}]
#: The deadlines this tree's entries get (the base knows none of them).
DEADLINES = {"headers_timeout_s": 5, "first_token_timeout_s": 1.0, "idle_timeout_s": 1.0}
FAULTS: dict[str, dict[str, Any]] = {
    "cut after 20 tokens": {"type": "midstream", "after": 20},
    "stall after 20 tokens": {"type": "stall", "after": 20},
    "slow first token (5 s)": {"type": "slow_first_token", "delay_s": 5},
    "malformed event": {"type": "malformed", "after": 20},
    "no [DONE]": {"type": "no_done"},
    "reset before headers": {"type": "reset"},
    "429 Retry-After 0.5 s": {"type": "429", "retry_after": 0.5},
    "429 without Retry-After": {"type": "429", "retry_after": None},
    "500 once": {"type": "500"},
    "context length": {"type": "context_length"},
    "content filter": {"type": "content_filter"},
    "flapping (503 for 2 s)": {"type": "503", "for_s": 2.0, "retry_after": 0.1},
}


def stream(url: str) -> dict[str, Any]:
    body = {"model": "local-model", "messages": MSG, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.monotonic()
    first = 0.0
    raw = b""
    try:
        with httpx.Client(timeout=60) as client, client.stream("POST", url, json=body) as r:
            status, backend = r.status_code, r.headers.get("x-infer-backend", "")
            for chunk in r.iter_bytes():
                if not first and b'"content":"' in chunk.replace(b'"content":""', b""):
                    first = time.monotonic() - started
                raw += chunk
    except httpx.HTTPError as exc:
        return {"status": 0, "error": type(exc).__name__, "s": time.monotonic() - started}
    out: dict[str, Any] = {"status": status, "s": time.monotonic() - started, "ttft_s": first,
                           "backend": backend}  # fmt: skip
    if status != 200:
        try:
            out["error"] = json.loads(raw).get("error")
        except ValueError:
            out["error"] = raw[:200].decode(errors="replace")
        return out
    text, usage, done, error = "", None, False, None
    for event in raw.decode(errors="replace").split("\n\n"):
        if not event.startswith("data: "):
            continue
        data = event[6:]
        if data == "[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            error = "malformed event reached the caller"
            continue
        error = chunk.get("error") or error
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
    out.update(text=text, usage=usage, done=done, error=error)
    return out


def rescued(fault: str, got: dict[str, Any], clean: dict[str, Any]) -> bool:
    if fault == "content filter":
        err = got.get("error") or {}
        return got["status"] == 400 and isinstance(err, dict) and err["code"] == "content_filter"
    whole = got["status"] == 200 and got.get("error") is None and got.get("done") is True
    return whole and got.get("text") == clean["text"] and got.get("usage") == clean["usage"]


def start_host(sims: list[ServerProcess], code: Path | None) -> ServerProcess:
    names = ["primary", "middle", "last"]
    backends = []
    for i, (name, sim) in enumerate(zip(names, sims, strict=True)):
        entry: dict[str, Any] = {"name": name, "kind": "openai", "base_url": sim.url + "/v1",
                                 "priority": i, "models": ["local-model"]}  # fmt: skip
        if code is None:
            entry.update(DEADLINES)
            if name == "middle":
                entry["continuation"] = True  # it claims to, and refuses: passed over
        backends.append(entry)
    port = free_port()
    tree = code or ROOT
    env = {"INFER_BACKENDS": json.dumps(backends), "INFER_AUTH_LEVEL": "ANONYMOUS",
           "INFER_REQUEST_TIMEOUT_S": "30", "PYTHONPATH": str(tree)}  # fmt: skip
    argv = [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(tree),
            "--no-queues", "--no-blobs"]  # fmt: skip
    host = ServerProcess(argv, port, ready_path="/api/healthz", name="bench-faults-devhost",
                         env=env, cwd=tree)  # fmt: skip
    host.start(timeout=60)
    return host


def settle(url: str, primary: httpx.Client) -> None:
    """Until the primary answers again: every circuit an earlier fault opened (for its
    Retry-After, or 5 s after three failures in a row) has closed, and a success has reset
    its count of failures, so each fault meets a healthy primary."""

    def answered() -> int:
        return int(primary.get("/admin/stats").json()["requests"].get(CHAT, {}).get("200", 0))

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        before = answered()
        stream(url)
        if answered() > before:
            return
        time.sleep(0.25)


def run(sims: list[ServerProcess], code: Path | None, repeat: int) -> dict[str, Any]:
    host = start_host(sims, code)
    url = host.url + "/api/v1/chat/completions"
    admin = [httpx.Client(base_url=s.url, timeout=10) for s in sims]
    results: dict[str, Any] = {}
    try:
        stream(url)  # warm
        clean_runs = [stream(url) for _ in range(repeat)]
        clean = clean_runs[0]
        results["fault-free"] = {
            "rescued": repeat, "of": repeat,
            "s": statistics.median(r["s"] for r in clean_runs),
            "ttft_s": statistics.median(r["ttft_s"] for r in clean_runs),
        }  # fmt: skip
        for fault, spec in FAULTS.items():
            runs = []
            for _ in range(repeat):
                for a in admin:
                    a.delete("/admin/faults")
                settle(url, admin[0])
                admin[0].post("/admin/faults", json=spec).raise_for_status()
                runs.append(stream(url))
                if "for_s" not in spec:  # the primary was asked, not skipped
                    assert admin[0].get("/admin/faults").json()["scheduled"] == [], fault
            ok = [r for r in runs if rescued(fault, r, clean)]
            results[fault] = {
                "rescued": len(ok), "of": repeat,
                "s": statistics.median(r["s"] for r in runs),
                "ttft_s": statistics.median(r.get("ttft_s", 0.0) for r in runs),
                "failure": next((f"{r.get('error') or r.get('status')} ({r.get('backend')})"
                                 for r in runs if r not in ok), None),
            }  # fmt: skip
            print(f"  {fault:28s} rescued {len(ok)}/{repeat}  {results[fault]['s']:.2f} s")
    finally:
        for a in admin:
            a.delete("/admin/faults")
            a.close()
        host.stop()
    return results


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    faults = list(runs["this tree"])
    fig, ax = plt.subplots(figsize=(10, 5.5))
    width = 0.4
    for i, (tag, color) in enumerate((("base", "#bbbbbb"), ("this tree", "#1f77b4"))):
        if tag not in runs:
            continue
        seconds = [runs[tag][f]["s"] for f in faults]
        bars = ax.barh([y + (i - 0.5) * width for y in range(len(faults))], seconds, width,
                       color=color, label=tag)  # fmt: skip
        for bar, fault in zip(bars, faults, strict=True):
            r = runs[tag][fault]
            ax.text(bar.get_width() + 0.05, bar.get_y() + width / 2,
                    f"{r['rescued']}/{r['of']}", va="center", fontsize=7)  # fmt: skip
    ax.set_yticks(range(len(faults)), faults, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds to the last byte (median); label: answers rescued")
    ax.set_title("A streamed chat (64 tokens) through devhost, one fault on the primary")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base-ref", default=None)
    args = parser.parse_args()
    flags = ["--min-output-tokens", str(TOKENS), "--max-output-tokens", str(TOKENS),
             "--hang-s", "20"]  # fmt: skip
    sims = [gpusim(None, *flags), gpusim(None, *flags, "--no-continue-final-message"),
            gpusim(None, *flags)]  # fmt: skip
    runs: dict[str, Any] = {}
    try:
        for sim in sims:
            sim.start(timeout=30)
        with worktree(args.base_ref) as base:
            if base is not None:
                print(f"base {args.base_ref}")
                runs["base"] = run(sims, base, args.repeat)
        print("this tree")
        runs["this tree"] = run(sims, None, args.repeat)
    finally:
        for sim in sims:
            sim.stop()
    result = {"tokens": TOKENS, "deadlines": DEADLINES, "repeat": args.repeat,
              "base_ref": args.base_ref, "runs": runs}  # fmt: skip
    path = write_result("faults", result)
    plot(result, RESULTS / "faults.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
