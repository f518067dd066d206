"""Counters behind ``GET /metrics`` (Prometheus text) and ``GET /admin/stats`` (JSON).

Prometheus series are monotonic for the life of the process; the admin stats are the
same request counts plus per-tag generation counts, and ``POST /admin/reset`` zeroes them.
Everything here is a dict increment or a bisect: cheap enough to call per request.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from typing import Any

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
)  # fmt: skip


class Histogram:
    """A Prometheus histogram: cumulative buckets are computed at render time."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
        lines.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests_total: Counter[tuple[str, str]] = Counter()
        self.prompt_tokens: Counter[str] = Counter()
        self.generation_tokens: Counter[str] = Counter()
        self.finished: Counter[tuple[str, str]] = Counter()
        self.ttft: dict[str, Histogram] = {}
        self.e2e: dict[str, Histogram] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stat_requests: Counter[tuple[str, str]] = Counter()
        self.stat_generations: Counter[str] = Counter()
        self.stat_completed = 0

    # --- recording -------------------------------------------------------------------
    def record_request(self, route: str, status: str) -> None:
        self.requests_total[route, status] += 1
        self.stat_requests[route, status] += 1

    def record_prompt(self, model: str, tokens: int) -> None:
        self.prompt_tokens[model] += tokens

    def record_first_token(self, model: str, seconds: float) -> None:
        hist = self.ttft.get(model)
        if hist is None:
            hist = self.ttft[model] = Histogram(TTFT_BUCKETS)
        hist.observe(seconds)

    def record_finished(
        self, model: str, tokens: int, finish_reason: str, seconds: float, tag: str | None
    ) -> None:
        """A model call ran to its end (all planned tokens produced, or an embedding)."""
        self.generation_tokens[model] += tokens
        self.finished[model, finish_reason] += 1
        hist = self.e2e.get(model)
        if hist is None:
            hist = self.e2e[model] = Histogram(E2E_BUCKETS)
        hist.observe(seconds)
        self.stat_completed += 1
        if tag is not None:
            self.stat_generations[tag] += 1

    def record_aborted(self, model: str, tokens: int) -> None:
        """A generation stopped early (client gone, injected fault): its tokens still ran."""
        self.generation_tokens[model] += tokens
        self.finished[model, "abort"] += 1

    # --- reading ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        requests: dict[str, dict[str, int]] = {}
        for (route, status), n in sorted(self.stat_requests.items()):
            requests.setdefault(route, {})[status] = n
        return {
            "requests": requests,
            "requests_total": sum(self.stat_requests.values()),
            "completed": self.stat_completed,
            "generations": dict(self.stat_generations),
        }

    def render(self, *, running: int, waiting: int, model_name: str) -> str:
        gauge_labels = f'model_name="{_label(model_name)}"'
        out = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{gauge_labels}}} {running}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{gauge_labels}}} {waiting}",
        ]
        for name, counter, text in (
            ("vllm:prompt_tokens_total", self.prompt_tokens, "Number of prefill tokens."),
            ("vllm:generation_tokens_total", self.generation_tokens, "Generated tokens."),
        ):
            out += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            out += [f'{name}{{model_name="{_label(m)}"}} {n}' for m, n in sorted(counter.items())]
        name = "vllm:request_success_total"
        out += [f"# HELP {name} Finished requests.", f"# TYPE {name} counter"]
        out += [
            f'{name}{{model_name="{_label(m)}",finished_reason="{_label(r)}"}} {n}'
            for (m, r), n in sorted(self.finished.items())
        ]
        for name, hists, text in (
            ("vllm:time_to_first_token_seconds", self.ttft, "Time to first token."),
            ("vllm:e2e_request_latency_seconds", self.e2e, "End-to-end request latency."),
        ):
            out += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            for model, hist in sorted(hists.items()):
                out += hist.render(name, f'model_name="{_label(model)}"')
        name = "gpusim_requests_total"
        out += [f"# HELP {name} HTTP requests by route and status.", f"# TYPE {name} counter"]
        out += [
            f'{name}{{route="{_label(r)}",status="{_label(s)}"}} {n}'
            for (r, s), n in sorted(self.requests_total.items())
        ]
        return "\n".join(out) + "\n"
