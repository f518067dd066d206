"""A function app with chat, jobs, the queue worker and batch: the scale-from-zero e2e test
drives HTTP, queued jobs and a batch file against one endpoint at once."""

import azure.functions as func

from functions.batch.azure import bp as batch
from functions.chat.azure import bp as chat
from functions.jobs.azure import bp as jobs
from functions.queue_worker.azure import bp as queue_worker

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

for blueprint in (chat, jobs, queue_worker, batch):
    app.register_functions(blueprint)
