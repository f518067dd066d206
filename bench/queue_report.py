"""Storage operations, CPU and drain rate per queue job, before / base / after, side by side.

Reads the results bench/queue.py wrote (``queue_<platform>_<hosts>p[_<N>w][_dynamic]_<tag>.json``;
keys ``azure-1p``, ``azure-1p-2w``, ``azure-1p-dynamic``, ...) for the
tags ``before`` (the jobs path before issue 12's storage cuts, measured once and kept),
``base`` (the product code of ``bench/queue_all.py --base-ref``, run back to back with
``after``) and ``after`` (this tree), and writes bench/results/queue_ops.json (each figure
per tag, plus ratios to ``before`` and ``base``) and queue_ops.png.

    .venv/bin/python -m bench.queue_report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TAGS = ["before", "base", "after"]
KINDS = [
    "blob.read", "blob.create", "blob.cas", "blob.write", "blob.container",
    "queue.receive", "queue.delete", "queue.visibility", "queue.send",
]  # fmt: skip
FIGURES = [
    "total_ops_per_job", "blob_ops_per_job", "worker_cpu_ms_per_job", "host_cpu_ms_per_job",
    "function_cpu_ms_per_job", "steady_ratio_of_measured_capacity", "measured_capacity_rps",
    "steady_jobs_per_s_10_to_90pct", "model_calls_per_job", "load_average_1m", "when", "code",
    "messages_in_flight_max_per_process", "backlog_queued_before_drain",
    "storage_service_cpu_ms_per_job", "endpoint_cpu_ms_per_job",
]  # fmt: skip


def load() -> dict[str, dict[str, dict[str, Any]]]:
    """{"azure-1p": {"before": {...}, "after": {...}}, ...}"""
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(RESULTS.glob("queue_*_*p_*.json")):
        data = json.loads(path.read_text())
        if data.get("tag") in TAGS:
            key = f"{data['platform']}-{data['hosts']}p"
            if (data.get("workers_per_host") or 1) > 1:
                key += f"-{data['workers_per_host']}w"
            if data.get("host_sku"):
                key += f"-{str(data['host_sku']).lower()}"
            runs.setdefault(key, {})[data["tag"]] = data
    return runs


def ratio(a: Any, b: Any) -> float | None:
    numbers = isinstance(a, int | float) and isinstance(b, int | float)
    return round(a / b, 3) if numbers and b else None


def main() -> None:
    runs = load()
    pairs: dict[str, Any] = {}
    for key in sorted(runs):
        by_tag = {t: runs[key][t] for t in TAGS if t in runs[key]}
        if "after" not in by_tag:
            continue
        entry: dict[str, Any] = {
            "ops_per_job": {t: r.get("storage_ops_per_job", {}) for t, r in by_tag.items()},
            **{f: {t: r.get(f) for t, r in by_tag.items()} for f in FIGURES},
        }
        after = by_tag["after"]
        for ref in ("before", "base"):
            if ref in by_tag:
                old = by_tag[ref]
                entry[f"after_vs_{ref}"] = {
                    "ops": ratio(after.get("total_ops_per_job"), old.get("total_ops_per_job")),
                    "blob_ops": ratio(after.get("blob_ops_per_job"), old.get("blob_ops_per_job")),
                    "cpu": ratio(
                        after.get("worker_cpu_ms_per_job"), old.get("worker_cpu_ms_per_job")
                    ),
                    "drain": ratio(
                        after.get("steady_ratio_of_measured_capacity"),
                        old.get("steady_ratio_of_measured_capacity"),
                    ),
                }
        pairs[key] = entry
    out = {
        "pairs": pairs,
        "note": "machine shared and loaded (load_average_1m): compare runs taken back to "
        "back; before = measured once before issue 12's storage cuts",
    }
    (RESULTS / "queue_ops.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    if not pairs:
        return
    plot(pairs)


def plot(pairs: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.8))
    labels, x = [], 0.0
    for key, pair in pairs.items():
        for tag, ops in pair["ops_per_job"].items():
            bottom = 0.0
            for i, kind in enumerate(KINDS):
                v = float(ops.get(kind, 0))
                if v:
                    seen = ax1.get_legend_handles_labels()[1]
                    ax1.bar(x, v, bottom=bottom, color=f"C{i}",
                            label=kind if kind not in seen else None)  # fmt: skip
                    bottom += v
            labels.append((x, f"{key}\n{tag}"))
            x += 1
        x += 0.5
    ax1.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=6, rotation=60)
    ax1.set_ylabel("storage operations per job")
    ax1.set_ylim(0, 7.5)
    ax1.legend(fontsize=6, ncol=3, loc="upper center")
    names = list(pairs)
    width = 0.8 / len(TAGS)
    for j, tag in enumerate(TAGS):
        xs = [i + (j - 1) * width for i in range(len(names))]
        cpu = [pairs[n]["worker_cpu_ms_per_job"].get(tag) or 0 for n in names]
        host = [pairs[n]["host_cpu_ms_per_job"].get(tag) or 0 for n in names]
        if any(cpu):
            ax2.bar(xs, cpu, width, color=f"C{j}", label=tag)
            ax2.bar(xs, host, width, color="none", edgecolor="k", hatch="//", lw=0.5,
                    label="of which host" if j == len(TAGS) - 1 else None)  # fmt: skip
        drain = [pairs[n]["steady_ratio_of_measured_capacity"].get(tag) or 0 for n in names]
        if any(drain):
            ax3.bar(xs, drain, width, color=f"C{j}", label=tag)
    for ax in (ax2, ax3):
        ax.set_xticks(list(range(len(names))), names, fontsize=6, rotation=25)
        ax.legend(fontsize=7)
    ax2.set_ylabel("worker process CPU ms per job")
    ax3.axhline(0.75, ls="--", c="gray", lw=0.8)
    ax3.axhline(0.90, ls=":", c="gray", lw=0.8)
    ax3.set_ylabel("drain rate / endpoint capacity (same run)")
    fig.suptitle("queue jobs: cost and drain rate per job (shared, loaded 2-core machine)")
    fig.tight_layout()
    fig.savefig(RESULTS / "queue_ops.png", dpi=100)


if __name__ == "__main__":
    main()
