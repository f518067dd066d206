"""The jobs app as deployed (chat + jobs + queue_worker blueprints) plus a stats route.

Imported by devhost in bench/queue.py: storage operations are counted at the SDK boundary
for the whole devhost process (the host's queue polling and deletes as well as the
worker's blob calls), and ``GET /api/bench/stats`` answers the counts and the process's CPU
time (``bench/storage_ops.py``). Nothing here is part of the product.
"""

import json

import azure.functions as func

from bench import storage_ops
from functions.chat.azure import bp as chat
from functions.jobs.azure import bp as jobs
from functions.queue_worker.azure import bp as queue_worker

storage_ops.install_azure()

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

for blueprint in (chat, jobs, queue_worker):
    app.register_functions(blueprint)


@app.route(route="bench/stats", methods=["GET"])
def bench_stats(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(storage_ops.snapshot()), mimetype="application/json")
