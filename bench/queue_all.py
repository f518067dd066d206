"""Every queue-drain configuration in one go, then the report.

Runs bench/queue.py for Azure (devhost + Azurite) and AWS (moto + the SQS mapping
stand-in) in the configurations of ``CONFIGS``, tagged ``after`` (this tree); with
``--base-ref REF`` each configuration is first run on the product code of ``REF`` (a
temporary git worktree; the harness and the endpoint stay this tree's), tagged ``base``,
back to back with its ``after``, so each pair sees the same machine load. Then
bench/queue_report.py writes queue_ops.json / queue_ops.png.

    .venv/bin/python -m bench.queue_all [--base-ref 49cce1c] [--jobs 600]
    make bench-queue [BASE_REF=49cce1c]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-ref", default="", help="also run the product code of this commit")
    p.add_argument("--jobs", type=int, default=600)
    p.add_argument("--platform", choices=["azure", "aws"], action="append",
                   help="only these platforms (default both)")  # fmt: skip
    args = p.parse_args()
    base: Path | None = None
    if args.base_ref:
        base = Path(tempfile.mkdtemp(prefix="bench-base-")) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base_ref],
                       cwd=ROOT, check=True)  # fmt: skip
    try:
        for config in CONFIGS:
            if args.platform and config[0] not in args.platform:
                continue
            if base is not None:
                run(config, "base", args.jobs, base, args.base_ref)
            run(config, "after", args.jobs, None, "")
    finally:
        if base is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
            shutil.rmtree(base.parent, ignore_errors=True)
    from bench import queue_report

    sys.argv = ["bench.queue_report"]
    queue_report.main()


if __name__ == "__main__":
    main()
