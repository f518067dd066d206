"""Every queue-drain configuration in one go, then the report.

Runs bench/queue.py for Azure (devhost + Azurite) and AWS (moto + the SQS mapping
stand-in) in the configurations of ``CONFIGS``, tagged ``after`` (this tree); with
``--base-ref REF`` each configuration is first run on the product code of ``REF`` (a
temporary git worktree; the harness and the endpoint stay this tree's), tagged ``base``,
back to back with its ``after``, so each pair sees the same machine load. Then
bench/queue_report.py writes queue_ops.json / queue_ops.png.

    .venv/bin/python -m bench.queue_all [--base-ref 49cce1c] [--jobs 600] [--repeat 3]
    make bench-queue [BASE_REF=49cce1c]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.fixtures.procs import PYTHON, ROOT

#: (platform, hosts, devhost --workers, WEBSITE_SKU): one host process (this machine's
#: processors, and a Consumption plan's defaults), one host with two worker processes, two
#: hosts; on AWS one and two mapping stand-ins
CONFIGS = [
    ("azure", 1, 1, ""), ("azure", 1, 1, "Dynamic"), ("azure", 1, 2, ""), ("azure", 2, 1, ""),
    ("aws", 1, 1, ""), ("aws", 2, 1, ""),
]  # fmt: skip


Config = tuple[str, int, int, str]


def run(config: Config, tag: str, jobs: int, code: Path | None, ref: str) -> None:
    platform, hosts, workers, sku = config
    cmd = [PYTHON, "-m", "bench.queue", "--platform", platform, "--hosts", str(hosts),
           "--workers", str(workers), "--jobs", str(jobs), "--tag", tag,
           *(["--sku", sku] if sku else [])]  # fmt: skip
    if code is not None:
        cmd += ["--code", str(code), "--code-ref", ref]
    print("==", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    if done.returncode:  # say so, go on with the others (the report keeps what was run)
        print(f"!! {config} {tag}: exit status {done.returncode}", flush=True)


def figures(config: Config, tag: str) -> dict[str, Any]:
    """The figures of the run just made (its result file), or why there are none."""
    from bench.queue import RESULTS, config_suffix

    platform, hosts, workers, sku = config
    path = RESULTS / f"queue_{platform}_{hosts}p{config_suffix(workers, sku)}_{tag}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"error": repr(exc)}
    keep = ("steady_ratio_of_measured_capacity", "worker_cpu_ms_per_job", "load_average_1m",
            "model_calls_per_job", "total_ops_per_job", "storage_service_cpu_ms_per_job",
            "endpoint_cpu_ms_per_job", "when")  # fmt: skip
    return {k: data.get(k) for k in keep}


def write_repeats(repeats: dict[str, dict[str, list[dict[str, Any]]]], base_ref: str) -> None:
    from bench.queue import RESULTS

    out: dict[str, Any] = {"base_ref": base_ref or None, "configs": {}}
    for key, by_tag in repeats.items():
        entry: dict[str, Any] = {}
        for tag, runs in by_tag.items():
            drains = [r["steady_ratio_of_measured_capacity"] for r in runs
                      if r.get("steady_ratio_of_measured_capacity") is not None]  # fmt: skip
            cpus = [r["worker_cpu_ms_per_job"] for r in runs if r.get("worker_cpu_ms_per_job")]
            entry[tag] = {
                "runs": runs,
                "drain_median": statistics.median(drains) if drains else None,
                "drain_range": [min(drains), max(drains)] if drains else None,
                "cpu_ms_median": statistics.median(cpus) if cpus else None,
            }
        out["configs"][key] = entry
    (RESULTS / "queue_repeats.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-ref", default="", help="also run the product code of this commit")
    p.add_argument("--jobs", type=int, default=600)
    p.add_argument("--platform", choices=["azure", "aws"], action="append",
                   help="only these platforms (default both)")  # fmt: skip
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every pair this many times; queue_repeats.json keeps each "
        "run's drain and CPU, and their medians (the report plots the last)",
    )
    args = p.parse_args()
    base: Path | None = None
    if args.base_ref:
        base = Path(tempfile.mkdtemp(prefix="bench-base-")) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base_ref],
                       cwd=ROOT, check=True)  # fmt: skip
    repeats: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for _ in range(args.repeat):
            for config in CONFIGS:
                if args.platform and config[0] not in args.platform:
                    continue
                tags = ["base", "after"] if base is not None else ["after"]
                for tag in tags:
                    run(config, tag, args.jobs, base if tag == "base" else None, args.base_ref)
                    key = "-".join(str(c) for c in config if c)
                    repeats.setdefault(key, {}).setdefault(tag, []).append(figures(config, tag))
    finally:
        if base is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
            shutil.rmtree(base.parent, ignore_errors=True)
    if args.repeat > 1:
        write_repeats(repeats, args.base_ref)
    from bench import queue_report

    sys.argv = ["bench.queue_report"]
    queue_report.main()


if __name__ == "__main__":
    main()
