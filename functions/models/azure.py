"""Azure Functions entry of the `models` function (Python v2 Blueprint, HTTP streams).

With HTTP streams enabled (PYTHON_ENABLE_INIT_INDEXING=1) every HTTP function of the app
takes the FastAPI extension's Request and returns a Starlette Response.
"""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from functions.http_auth import AUTH_LEVEL
from shared.web import models_endpoint, usage_endpoint

bp = func.Blueprint()


@bp.route(route="v1/models", methods=["GET"], auth_level=AUTH_LEVEL)
async def models(req: Request) -> Response:
    return await models_endpoint(req)


@bp.route(route="v1/usage", methods=["GET"], auth_level=AUTH_LEVEL)
async def usage(req: Request) -> Response:
    return await usage_endpoint(req)
