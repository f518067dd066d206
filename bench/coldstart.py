"""Cold start per handler: import + first invocation, and peak RSS, in fresh interpreters.

Beside each handler, in the same run, the floor: a bare import of the packages an HTTP
handler cannot avoid (fastapi, mangum, httpx, pydantic), and for reference the packages the
project keeps off the HTTP path (openai, boto3, azure-identity). Each probe runs ``--rounds``
times, alternating, and the median is reported; the first invocation is served by a gpusim
with zero latency so it measures our code, not the model.

    python -m bench.coldstart [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from typing import Any

from bench.common import PYTHON, ROOT, backends_for, gpusim, write_result

HANDLERS = [
    ("chat (aws)", "functions.chat.aws", "aws"),
    ("completions (aws)", "functions.completions.aws", "aws"),
    ("embeddings (aws)", "functions.embeddings.aws", "aws"),
    ("models (aws)", "functions.models.aws", "aws"),
    ("health (aws)", "functions.health.aws", "aws"),
    ("function_app (azure, chat)", "function_app", "azure"),
]
REFERENCES = [
    ("floor: fastapi+mangum+httpx+pydantic", "fastapi,mangum,httpx,pydantic", "none"),
    (
        "floor (azure): + azure.functions + http extension",
        "fastapi,mangum,httpx,pydantic,azure.functions,azurefunctions.extensions.http.fastapi",
        "none",
    ),
    ("ref: openai", "openai", "none"),
    ("ref: boto3", "boto3", "none"),
    ("ref: azure.identity", "azure.identity", "none"),
    (
        "ref: every card package eagerly",
        "fastapi,mangum,httpx,pydantic,openai,boto3,azure.identity,azure.functions",
        "none",
    ),
]


def probe(modules: str, invoke: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "probe.py"), "--import", modules, "--invoke", invoke],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    import os

    sim = gpusim(
        None,
        "--ttft-base-ms",
        "0",
        "--prefill-ms-per-token",
        "0",
        "--itl-ms",
        "0",
        "--min-output-tokens",
        "4",
        "--max-output-tokens",
        "4",
    ).start()
    env = {**os.environ, "INFER_BACKENDS": backends_for(sim)}
    # Deployed artifacts ship bytecode (tools/package), site-packages has it from pip:
    # compile the project's own modules too, so neither side pays for compiling.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", "shared", "functions", "function_app.py"],
        cwd=ROOT,
        check=True,
        env=env,
    )
    rows = HANDLERS + REFERENCES
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in rows}
    try:
        for _ in range(args.rounds):
            for label, modules, invoke in rows:
                samples[label].append(probe(modules, invoke, env))
    finally:
        sim.stop()
    table: dict[str, Any] = {}
    for label, runs in samples.items():
        table[label] = {
            "import_s": round(statistics.median(r["import_s"] for r in runs), 4),
            "first_invoke_s": round(statistics.median(r["invoke_s"] for r in runs), 4),
            "cold_start_s": round(statistics.median(r["total_s"] for r in runs), 4),
            # The least-disturbed run: the work itself, with the machine's noise removed.
            "cold_start_min_s": round(min(r["total_s"] for r in runs), 4),
            "rss_mb": round(statistics.median(r["rss_mb"] for r in runs), 1),
            "status": runs[-1]["status"],
            "heavy_modules": runs[-1]["heavy_modules"],
        }
    floor = table[REFERENCES[0][0]]["cold_start_s"]
    azure_floor = table[REFERENCES[1][0]]["cold_start_s"]
    for label, _, invoke in HANDLERS:
        # The Functions worker has azure.functions loaded before it indexes the app, so the
        # Azure entry is compared with a floor that includes it.
        ref = REFERENCES[1][0] if invoke == "azure" else REFERENCES[0][0]
        row, base = table[label], table[ref]
        row["ratio_to_floor"] = round(row["cold_start_s"] / base["cold_start_s"], 3)
        # Each round's handler over the same round's floor, then the median: the pairs ran
        # seconds apart, so the machine's drift between rounds cancels out.
        row["ratio_to_floor_paired"] = round(
            statistics.median(
                a["total_s"] / b["total_s"]
                for a, b in zip(samples[label], samples[ref], strict=True)
            ),
            3,
        )
        row["ratio_to_floor_min"] = round(row["cold_start_min_s"] / base["cold_start_min_s"], 3)
    path = write_result(
        "coldstart",
        {"rounds": args.rounds, "floor_s": floor, "azure_floor_s": azure_floor, "results": table},
    )
    plot(table, str(path.with_suffix(".png")))
    for label, row in table.items():
        print(
            f"{label:45s} cold={row['cold_start_s'] * 1000:6.1f} ms"
            f" (min {row['cold_start_min_s'] * 1000:6.1f})  rss={row['rss_mb']:5.1f} MB"
            f"  ratio={row.get('ratio_to_floor', '-')} (min {row.get('ratio_to_floor_min', '-')},"
            f" paired {row.get('ratio_to_floor_paired', '-')})"
        )


def plot(table: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    imp = [table[k]["import_s"] * 1000 for k in labels]
    inv = [table[k]["first_invoke_s"] * 1000 for k in labels]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    a1.barh(labels, imp, label="import")
    a1.barh(labels, inv, left=imp, label="first invocation")
    a1.set_xlabel("ms")
    a1.legend()
    a1.invert_yaxis()
    a1.tick_params(axis="y", labelsize=7)
    a2.barh(labels, [table[k]["rss_mb"] for k in labels], color="#c84")
    a2.set_xlabel("peak RSS (MB)")
    a2.invert_yaxis()
    a2.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
