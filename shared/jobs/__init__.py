"""Async inference jobs: the record model, the job store, the HTTP API and the queue worker.

    model.py          JobRecord (public GET shape + lease), JobLine, parse_line, ids
    store.py          JobStore over an ObjectStore: conditional create / replace
    worker.py         process_message(text, Attempt, Context) -> Outcome (ack|retry|poison)
    queue_runtime.py  carry an Outcome out on Azure Storage queues and SQS
    http.py           POST /v1/jobs, GET /v1/jobs/{id}
    callback.py       signed best-effort completion callbacks
    config.py         INFER_MAX_ATTEMPTS, INFER_JOB_TIMEOUT_S, ...

docs/jobs.md describes the flow and its guarantees.
"""
