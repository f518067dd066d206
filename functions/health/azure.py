"""Azure Functions entry of the `health` function (Python v2 Blueprint, HTTP streams).

With HTTP streams enabled (PYTHON_ENABLE_INIT_INDEXING=1) every HTTP function of the app
takes the FastAPI extension's Request and returns a Starlette Response.
"""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.web import healthz_endpoint, readyz_endpoint

bp = func.Blueprint()


@bp.route(route="healthz", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def healthz(req: Request) -> Response:
    return await healthz_endpoint(req)


@bp.route(route="readyz", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def readyz(req: Request) -> Response:
    return await readyz_endpoint(req)
