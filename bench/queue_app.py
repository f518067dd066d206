"""The jobs app as deployed (chat + jobs + queue_worker blueprints) plus a stats route.

Imported by devhost in bench/queue.py: storage operations are counted at the SDK boundary
for the whole devhost process (the host's queue polling and deletes as well as the
worker's blob calls), and ``GET /api/bench/stats`` answers the counts and the process's CPU
time (``bench/storage_ops.py``). With ``BENCH_PROFILE`` set (``bench/queue.py --profile``)
the process runs under yappi (CPU clock, every thread) and ``GET /api/bench/profile``
writes the statistics to that path (pstats format). Nothing here is part of the product.
"""

import json
import os

import azure.functions as func

from bench import storage_ops
from functions.chat.azure import bp as chat
from functions.jobs.azure import bp as jobs
from functions.queue_worker.azure import bp as queue_worker

storage_ops.install_azure()
storage_ops.start_profile(os.environ.get("BENCH_PROFILE"))

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

for blueprint in (chat, jobs, queue_worker):
    app.register_functions(blueprint)


@app.route(route="bench/stats", methods=["GET"])
def bench_stats(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(storage_ops.snapshot()), mimetype="application/json")


@app.route(route="bench/profile", methods=["GET"])
def bench_profile(req: func.HttpRequest) -> func.HttpResponse:
    done = storage_ops.clear_profile() if req.params.get("clear") else storage_ops.stop_profile()
    return func.HttpResponse(json.dumps(done), mimetype="application/json")
