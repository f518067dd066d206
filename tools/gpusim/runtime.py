"""One simulator's state (engine, faults, metrics) and the steps every protocol shares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.types import Scope

from . import wire
from .config import Config
from .engine import Engine
from .faults import Fault, FaultInjector
from .metrics import Metrics
from .quota import Quota

TAG_HEADER = "x-gpusim-tag"


@dataclass
class Runtime:
    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine = field(init=False)
    faults: FaultInjector = field(init=False)
    quota: Quota = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.engine = Engine(c, self.metrics)
        self.faults = FaultInjector(c.fail_rate, c.fail_types, c.retry_after, c.seed)
        self.quota = Quota(c.tpm, c.rpm)

    def knows_model(self, name: str) -> bool:
        return self.config.accepts_any_model or name in self.config.models

    @property
    def primary_model(self) -> str:
        served = self.config.served_models
        return served[0] if served else "*"

    def stats(self) -> dict[str, object]:
        e = self.engine
        return {
            **self.metrics.stats(),
            "running": e.running,
            "waiting": e.waiting,
            "peak_running": e.peak_running,
            "peak_waiting": e.peak_waiting,
            "faults": self.faults.describe(),
            "scale": e.describe_scale(),
            "quota_refused": self.quota.refused,
        }

    def reset_stats(self) -> None:
        self.metrics.reset_stats()
        self.engine.reset_peaks()

    async def connection_fault(self, fault: Fault, scope: Scope) -> None:
        """Carry out a "reset" or "timeout" fault (protocol-independent: nothing is sent).

        "timeout" holds the request until the client disconnects (the caller runs this
        under :func:`wire.run_until_disconnect`) or ``hang_s`` passes, then resets.
        """
        wire.set_outcome(scope, fault.type)
        if fault.type == "timeout":
            await asyncio.sleep(self.config.hang_s)
        wire.abort_connection(scope, reset=True)
