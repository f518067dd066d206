"""Cold start and CPU per request of two revisions of the code, side by side in one run.

A refactor must not cost the user anything. This checks out ``--before`` (a git revision;
``git archive`` into a temporary folder) and compares it with the working tree (``after``):

- cold start: ``bench/probe.py`` of each tree, in fresh interpreters (import + first
  invocation of the Lambda chat handler and of the Azure app's chat function), alternating
  trees, ``--rounds`` each; medians and the least-disturbed run (min) are reported;
- CPU per request: one fresh process per tree sends ``--requests`` chats (half streamed)
  through the chat function's FastAPI app in-process (``httpx.ASGITransport``) to a
  zero-latency gpusim after a warm-up, and reports ``time.process_time`` per request.

Both trees talk to the same gpusim, and the ratios after/before are what to read: the machine's
noise hits both sides alike. Writes bench/results/revisions.{json,png}.

    python -m bench.revisions [--before 49cce1c] [--rounds 5] [--requests 300]

The default ``--before`` is the last commit before the core was consolidated (one backend base,
one line reader, one lifecycle, one retry budget); where the clone lacks it, it says so and
skips.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, backends_for, gpusim, write_result
from bench.telemetry import WORKER  # the same chats (half streamed) after a warm-up

BEFORE = "49cce1c"
PROBES = [
    ("chat (aws)", "functions.chat.aws", "aws"),
    ("function_app (azure, chat)", "function_app", "azure"),
]


def _env(backends: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "INFER_BACKENDS": backends}


def _last_json(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return data


def export(rev: str, dest: Path) -> bool:
    """The tree of ``rev`` under ``dest``; False where this clone does not have ``rev``."""
    known = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
    )
    if known.returncode != 0:
        return False
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return True


def cold(tree: Path, module: str, invoke: str, backends: str) -> dict[str, Any]:
    argv = [PYTHON, str(tree / "bench" / "probe.py"), "--import", module, "--invoke", invoke]
    out = subprocess.run(
        argv, capture_output=True, text=True, env=_env(backends), cwd=tree, check=True,
        timeout=120,
    )  # fmt: skip
    return _last_json(out.stdout)


def cpu(tree: Path, backends: str, n: int) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, "-c", WORKER, str(n)], capture_output=True, text=True, env=_env(backends),
        cwd=tree, check=True, timeout=600,
    )  # fmt: skip
    return _last_json(out.stdout)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 4)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*data["cold_start"], "CPU per request"]
    before = [data["cold_start"][k]["before"]["total_s"] * 1000 for k in data["cold_start"]]
    after = [data["cold_start"][k]["after"]["total_s"] * 1000 for k in data["cold_start"]]
    before.append(data["per_request"]["before"]["cpu_ms_per_request"])
    after.append(data["per_request"]["after"]["cpu_ms_per_request"])
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.6))
    for ax, label, b, a in zip(axes, labels, before, after, strict=True):
        ax.bar(["before", "after"], [b, a], color=["#999999", "#2f6fb0"])
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("ms (median)")
        ax.text(1, a, f"{a / b:.2f}x", ha="center", va="bottom", fontsize=9)
    fig.suptitle(f"before = {data['before']}, after = working tree (same run)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default=BEFORE, help="git revision to compare with")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        before = Path(tmp)
        if not export(args.before, before):
            print(f"bench.revisions: {args.before} is not in this clone; skipped")
            return None
        trees = {"before": before, "after": ROOT}
        for tree in trees.values():
            # Deployed artifacts ship bytecode: neither side pays for compiling.
            subprocess.run(
                [PYTHON, "-m", "compileall", "-q", "shared", "functions", "function_app.py"],
                cwd=tree, check=True, capture_output=True,
            )  # fmt: skip
        sim = gpusim(None, "--ttft-base-ms", "0", "--itl-ms", "0", "--prefill-ms-per-token", "0",
                     "--max-output-tokens", "16", "--min-output-tokens", "16")  # fmt: skip
        sim.start()
        try:
            backends = backends_for(sim)
            cold_runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                label: {side: [] for side in trees} for label, _, _ in PROBES
            }
            cpu_runs: dict[str, list[dict[str, Any]]] = {side: [] for side in trees}
            for _ in range(args.rounds):
                for side, tree in trees.items():
                    for label, module, invoke in PROBES:
                        cold_runs[label][side].append(cold(tree, module, invoke, backends))
                    cpu_runs[side].append(cpu(tree, backends, args.requests))
        finally:
            sim.stop()
    data: dict[str, Any] = {
        "before": args.before,
        "after": "working tree",
        "rounds": args.rounds,
        "requests": args.requests,
        "command": "python -m bench.revisions " + " ".join(argv or sys.argv[1:]),
        "cold_start": {},
        "per_request": {},
    }
    for label, sides in cold_runs.items():
        row = {
            side: {
                "import_s": _median(runs, "import_s"),
                "first_invoke_s": _median(runs, "invoke_s"),
                "total_s": _median(runs, "total_s"),
                "total_min_s": round(min(r["total_s"] for r in runs), 4),
                "rss_mb": round(statistics.median(r["rss_mb"] for r in runs), 1),
                "status": sorted({r["status"] for r in runs}),
            }
            for side, runs in sides.items()
        }
        row["ratio_after_before"] = round(row["after"]["total_s"] / row["before"]["total_s"], 3)
        row["ratio_min_after_before"] = round(
            row["after"]["total_min_s"] / row["before"]["total_min_s"], 3
        )
        data["cold_start"][label] = row
    for side, runs in cpu_runs.items():
        data["per_request"][side] = {
            k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]
        }
    data["per_request"]["ratio_after_before"] = round(
        data["per_request"]["after"]["cpu_ms_per_request"]
        / data["per_request"]["before"]["cpu_ms_per_request"],
        3,
    )
    path = write_result("revisions", data)
    plot(data, path.with_suffix(".png"))
    print(json.dumps(data, indent=2))
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
