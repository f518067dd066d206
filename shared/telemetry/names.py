"""Metric names, units and bucket boundaries (OpenTelemetry GenAI semantic conventions).

Plain data, stdlib only: the facade, the OpenTelemetry provider and the EMF writer all read
this one table, so a name cannot differ between exporters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["histogram", "counter", "gauge"]

#: gen_ai.client.operation.duration / gen_ai.server.request.duration: 0.01 s doubling to 81.92 s.
DURATION_BUCKETS = tuple(round(0.01 * 2**i, 2) for i in range(14))
#: gen_ai.client.token.usage: 1, 4, 16 ... 67108864 (powers of 4).
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
#: Seconds a queue job waited (age at start, time in the queue): 10 ms to about 6 hours.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None

    @property
    def emf_unit(self) -> str:
        return {"s": "Seconds", "{token}": "Count", "{line}/s": "Count/Second"}.get(
            self.unit, "Count"
        )


CLIENT_DURATION = Metric(
    "gen_ai.client.operation.duration",
    "histogram",
    "s",
    "Duration of one attempt toward a model endpoint (a stream: until its last byte)",
    DURATION_BUCKETS,
)
CLIENT_TOKENS = Metric(
    "gen_ai.client.token.usage",
    "histogram",
    "{token}",
    "Tokens the endpoint reported per request (gen_ai.token.type input | output)",
    TOKEN_BUCKETS,
)
SERVER_DURATION = Metric(
    "gen_ai.server.request.duration",
    "histogram",
    "s",
    "Duration of a request as its caller sees it",
    DURATION_BUCKETS,
)
SERVER_TTFT = Metric(
    "gen_ai.server.time_to_first_token",
    "histogram",
    "s",
    "Time from the request's arrival to the first content chunk sent to the caller",
    TTFT_BUCKETS,
)
SERVER_TPOT = Metric(
    "gen_ai.server.time_per_output_token",
    "histogram",
    "s",
    "Mean gap between output tokens after the first, as the caller receives them",
    TPOT_BUCKETS,
)
RETRIES = Metric("infer.retries", "counter", "{retry}", "Retries after a retryable failure")
FAILOVERS = Metric(
    "infer.failovers", "counter", "{failover}", "Requests moved to another backend after a failure"
)
CIRCUIT_CHANGES = Metric(
    "infer.circuit.changes", "counter", "{change}", "Circuit transitions (infer.circuit.state)"
)
CIRCUIT_STATE = Metric(
    "infer.circuit.state", "gauge", "1", "Circuit per backend: 0 closed, 1 half open, 2 open"
)
THROTTLES = Metric(
    "infer.throttles",
    "counter",
    "{response}",
    "429 answers (infer.throttle.source backend | limit)",
)
CACHE = Metric("infer.cache.requests", "counter", "{request}", "Cache lookups by infer.cache")
LIMIT_REFUSALS = Metric(
    "infer.limit.refusals", "counter", "{request}", "Requests refused by a caller limit"
)
JOB_AGE = Metric(
    "infer.job.age_at_start",
    "histogram",
    "s",
    "Age of a queue job (since it was submitted) when a delivery starts running it",
    WAIT_BUCKETS,
)
JOB_QUEUE_TIME = Metric(
    "infer.job.queue_time",
    "histogram",
    "s",
    "Time this delivery's message spent in the queue",
    WAIT_BUCKETS,
)
BATCH_LINES = Metric(
    "infer.batch.lines", "counter", "{line}", "Batch lines committed (infer.outcome ok | failed)"
)
BATCH_RATE = Metric(
    "infer.batch.lines_per_second", "gauge", "{line}/s", "Lines committed per second by a shard"
)
BATCH_LIMIT = Metric(
    "infer.batch.in_flight_limit", "gauge", "{request}", "The batch's adaptive concurrency limit"
)
PROBE_AVAILABILITY = Metric(
    "infer.probe.availability",
    "gauge",
    "1",
    "Scheduled probe per backend: 1 it answered, 0 it did not (infer.probe.mode)",
)
PROBE_TTFT = Metric(
    "infer.probe.time_to_first_token",
    "histogram",
    "s",
    "Scheduled probe per backend: time to the first content chunk of a one-token chat",
    TTFT_BUCKETS,
)
COST = Metric(
    "infer.cost",
    "counter",
    "{currency}",
    "What answers cost: the serving backend's price x the usage it reported (by caller, "
    "model and backend)",
)
BACKLOG = Metric(
    "infer.backend.backlog",
    "gauge",
    "{request}",
    "Requests of an instance waiting for a slot of this backend's max_concurrency (a "
    "scaling signal: the endpoint needs more replicas); recorded as a wait starts and ends",
)
QUOTA_HEADROOM = Metric(
    "infer.backend.quota_remaining",
    "gauge",
    "{unit}",
    "What the provider's x-ratelimit-remaining-* headers say is left "
    "(infer.quota.kind requests | tokens)",
)

ALL: tuple[Metric, ...] = (
    CLIENT_DURATION,
    CLIENT_TOKENS,
    SERVER_DURATION,
    SERVER_TTFT,
    SERVER_TPOT,
    RETRIES,
    FAILOVERS,
    CIRCUIT_CHANGES,
    CIRCUIT_STATE,
    THROTTLES,
    CACHE,
    LIMIT_REFUSALS,
    JOB_AGE,
    JOB_QUEUE_TIME,
    BATCH_LINES,
    BATCH_RATE,
    BATCH_LIMIT,
    PROBE_AVAILABILITY,
    PROBE_TTFT,
    BACKLOG,
    QUOTA_HEADROOM,
    COST,
)
