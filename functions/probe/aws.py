"""AWS Lambda entry of `probe`: invoked by EventBridge Scheduler (SAM ``ScheduleV2``).

Returns the report (availability, TTFT and circuit per backend), which the Scheduler drops
but a manual ``aws lambda invoke`` shows.
"""

import asyncio
from typing import Any

from shared.probe import run_scheduled_probe


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asyncio.run(run_scheduled_probe())
