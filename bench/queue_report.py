"""Storage operations, CPU and drain rate per queue job, before and after, side by side.

Reads the results bench/queue.py wrote (``queue_<platform>_<hosts>p_<tag>.json``, tags
``before`` and ``after``: the same benchmark run against the code before and after the
jobs-path changes, each pair back to back on the same machine) and writes
bench/results/queue_ops.json (ratios after/before) and queue_ops.png.

    .venv/bin/python -m bench.queue_report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = [
    "blob.read", "blob.create", "blob.cas", "blob.write", "blob.container",
    "queue.receive", "queue.delete", "queue.visibility", "queue.send",
]  # fmt: skip


def load() -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(RESULTS.glob("queue_*_*p_*.json")):
        data = json.loads(path.read_text())
        if data.get("tag") in ("before", "after"):
            runs[f"{data['platform']}-{data['hosts']}p-{data['tag']}"] = data
    return runs


def main() -> None:
    runs = load()
    pairs: dict[str, Any] = {}
    for key in sorted({k.rsplit("-", 1)[0] for k in runs}):
        before, after = runs.get(key + "-before"), runs.get(key + "-after")
        if not before or not after:
            continue
        pairs[key] = {
            "ops_per_job": {
                "before": before["storage_ops_per_job"],
                "after": after["storage_ops_per_job"],
            },
            "total_ops_per_job": [before["total_ops_per_job"], after["total_ops_per_job"]],
            "blob_ops_per_job": [before["blob_ops_per_job"], after["blob_ops_per_job"]],
            "ops_ratio_after_before": round(
                after["total_ops_per_job"] / before["total_ops_per_job"], 3
            ),
            "blob_ops_ratio_after_before": round(
                after["blob_ops_per_job"] / before["blob_ops_per_job"], 3
            ),
            "cpu_ms_per_job": [before["worker_cpu_ms_per_job"], after["worker_cpu_ms_per_job"]],
            "cpu_ratio_after_before": round(
                after["worker_cpu_ms_per_job"] / before["worker_cpu_ms_per_job"], 3
            ),
            "steady_ratio_of_measured_capacity": [
                before["steady_ratio_of_measured_capacity"],
                after["steady_ratio_of_measured_capacity"],
            ],
            "measured_capacity_rps": [
                before["measured_capacity_rps"],
                after["measured_capacity_rps"],
            ],
            "model_calls_per_job": [before["model_calls_per_job"], after["model_calls_per_job"]],
            "load_average_1m": [before.get("load_average_1m"), after.get("load_average_1m")],
        }
    out = {"pairs": pairs, "note": "machine shared and loaded: compare ratios within a pair"}
    (RESULTS / "queue_ops.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    if not pairs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4.5))
    labels, x = [], 0.0
    for key, pair in pairs.items():
        for tag in ("before", "after"):
            ops = pair["ops_per_job"][tag]
            bottom = 0.0
            for i, kind in enumerate(KINDS):
                v = float(ops.get(kind, 0))
                if v:
                    seen = ax1.get_legend_handles_labels()[1]
                    label = kind if kind not in seen else None
                    ax1.bar(x, v, bottom=bottom, color=f"C{i}", label=label)
                    bottom += v
            labels.append((x, f"{key}\n{tag}"))
            x += 1
        x += 0.5
    ax1.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=6, rotation=60)
    ax1.set_ylabel("storage operations per job")
    ax1.set_ylim(0, 7.5)
    ax1.legend(fontsize=6, ncol=3, loc="upper center")
    names = list(pairs)
    idx = range(len(names))
    ax2.bar([i - 0.2 for i in idx], [pairs[n]["cpu_ms_per_job"][0] for n in names], 0.4,
            label="before")  # fmt: skip
    ax2.bar([i + 0.2 for i in idx], [pairs[n]["cpu_ms_per_job"][1] for n in names], 0.4,
            label="after")  # fmt: skip
    ax2.set_xticks(list(idx), names, fontsize=7)
    ax2.set_ylabel("worker CPU ms per job")
    ax2.legend(fontsize=7)
    ratio = "steady_ratio_of_measured_capacity"
    ax3.bar([i - 0.2 for i in idx], [pairs[n][ratio][0] for n in names], 0.4, label="before")
    ax3.bar([i + 0.2 for i in idx], [pairs[n][ratio][1] for n in names], 0.4, label="after")
    ax3.axhline(0.75, ls="--", c="gray", lw=0.8)
    ax3.axhline(0.90, ls=":", c="gray", lw=0.8)
    ax3.set_xticks(list(idx), names, fontsize=7)
    ax3.set_ylabel("drain rate / endpoint capacity (same run)")
    ax3.legend(fontsize=7)
    fig.suptitle("queue jobs: cost and drain rate per job (shared, loaded 2-core machine)")
    fig.tight_layout()
    fig.savefig(RESULTS / "queue_ops.png", dpi=100)


if __name__ == "__main__":
    main()
