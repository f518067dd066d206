"""Each platform's glue, one module per platform, imported only by ``functions/``.

    azure.py   Azure Functions host semantics: a job ``Outcome`` on the Storage-queue trigger
               (re-enqueue with a visibility delay, ``RetryLater``, the poison queue)
    aws.py     AWS Lambda: SQS and S3 events parsed with Powertools' event classes, partial
               batch responses with its batch processor, the SQS calls (visibility, DLQ)

The rest of ``shared/`` decides (``shared.jobs.worker.Outcome``: ack, retry, defer, poison)
and never imports these modules; each imports its SDKs on first use, not at import.
"""
