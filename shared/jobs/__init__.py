"""Async inference jobs: the record model, the job store, the HTTP API and the queue worker.

    model.py          JobRecord (public GET shape + lease), JobLine, parse_line, ids
    store.py          JobStore over an ObjectStore: conditional create / replace
    worker.py         process_message(text, Attempt, Context) -> Outcome (ack|retry|defer|poison)
    queue_runtime.py  deliver(): one delivery as both platforms run it; RetryLater
    http.py           POST /v1/jobs, GET /v1/jobs/{id}
    callback.py       signed best-effort completion callbacks
    config.py         INFER_MAX_ATTEMPTS, INFER_JOB_TIMEOUT_S, ...

Carrying an Outcome out on a platform (Storage queues, SQS) is platform glue:
``shared.platform.azure`` and ``shared.platform.aws``, imported only by functions/queue_worker.
docs/jobs.md describes the flow and its guarantees.
"""
