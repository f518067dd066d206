"""Azure Functions entry point (Python v2 programming model).

Registers every function's Blueprint. `func start` (Core Tools) and `python -m tools.devhost`
both index this module. Importing it builds no client, credential or settings object.
"""

import azure.functions as func

from functions.batch.azure import bp as batch
from functions.chat.azure import bp as chat
from functions.completions.azure import bp as completions
from functions.embeddings.azure import bp as embeddings
from functions.health.azure import bp as health
from functions.http_auth import AUTH_LEVEL
from functions.jobs.azure import bp as jobs
from functions.models.azure import bp as models
from functions.probe.azure import bp as probe
from functions.queue_worker.azure import bp as queue_worker

app = func.FunctionApp(http_auth_level=AUTH_LEVEL)  # INFER_AUTH_LEVEL (functions/http_auth.py)

for blueprint in (chat, completions, embeddings, models, health, jobs, queue_worker, batch, probe):
    app.register_functions(blueprint)
