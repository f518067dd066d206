"""A timer-triggered function for devhost's timer tests (tests only).

Each invocation appends what the function was handed (``past_due``, ``schedule_status``,
``schedule``) to ``$DEVHOST_TEST_OUT/ticks.jsonl``; the schedule comes from the app setting
``DEVHOST_TEST_TIMER``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import azure.functions as func

app = func.FunctionApp()


@app.timer_trigger(
    schedule="%DEVHOST_TEST_TIMER%", arg_name="timer", run_on_startup=True, use_monitor=True
)
def tick(timer: func.TimerRequest) -> None:
    record = {
        "t": time.time(),
        "pid": os.getpid(),
        "type": type(timer).__name__,
        "past_due": timer.past_due,
        "schedule_status": timer.schedule_status,
        "schedule": timer.schedule,
    }
    with (Path(os.environ["DEVHOST_TEST_OUT"]) / "ticks.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
