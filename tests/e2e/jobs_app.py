"""A function_app-like module for the jobs e2e tests: chat + jobs + queue_worker blueprints.

The real blueprints, registered the way function_app.py registers them, so devhost drives
exactly the code the Functions host would.
"""

import azure.functions as func

from functions.chat.azure import bp as chat
from functions.jobs.azure import bp as jobs
from functions.queue_worker.azure import bp as queue_worker

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

for blueprint in (chat, jobs, queue_worker):
    app.register_functions(blueprint)
