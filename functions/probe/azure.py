"""Azure Functions entry of `probe`: a timer trigger on the NCRONTAB in INFER_PROBE_SCHEDULE.

``use_monitor`` keeps the schedule status in the storage account, so an occurrence missed
while the app was stopped runs when it starts again (``timer.past_due``).
"""

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger("functions.probe")


@bp.timer_trigger(
    schedule="%INFER_PROBE_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True
)
async def probe(timer: func.TimerRequest) -> None:
    from shared.probe import run_scheduled_probe  # on first run: no cost to the app's cold start

    report = await run_scheduled_probe(past_due=timer.past_due)
    log.info(
        "probe done past_due=%s available=%d/%d",
        timer.past_due,
        report["available"],
        len(report["backends"]),
    )
