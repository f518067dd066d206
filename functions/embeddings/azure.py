"""Azure Functions entry of the `embeddings` function (Python v2 Blueprint, HTTP streams).

With HTTP streams enabled (PYTHON_ENABLE_INIT_INDEXING=1) every HTTP function of the app
takes the FastAPI extension's Request and returns a Starlette Response.
"""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from functions.http_auth import AUTH_LEVEL
from shared.schemas import Operation
from shared.web import openai_endpoint

bp = func.Blueprint()


@bp.route(route="v1/embeddings", methods=["POST"], auth_level=AUTH_LEVEL)
async def embeddings(req: Request) -> Response:
    return await openai_endpoint(req, Operation.EMBEDDINGS)
