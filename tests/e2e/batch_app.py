"""A function app with `chat` and the `batch` functions (blob trigger + shard queue).

Used by the batch function and e2e tests (devhost indexes it with ``--app-module
tests.e2e.batch_app``), so they do not depend on the root function_app.py.
"""

import azure.functions as func

from functions.batch.azure import bp as batch
from functions.chat.azure import bp as chat

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(chat)
app.register_functions(batch)
