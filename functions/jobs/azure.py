"""Azure Functions entry of the `jobs` function (Python v2 Blueprint, FastAPI extension types)."""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from functions.http_auth import AUTH_LEVEL

bp = func.Blueprint()

# shared.jobs is imported by the first jobs request, not when the worker indexes the app:
# one worker serves every function, and a chat request's cold start must not pay for it.


@bp.route(route="v1/jobs", methods=["POST"], auth_level=AUTH_LEVEL)
async def jobs_create(req: Request) -> Response:
    from shared.jobs.http import create_job_endpoint

    return await create_job_endpoint(req)


@bp.route(route="v1/jobs/{id}", methods=["GET"], auth_level=AUTH_LEVEL)
async def jobs_get(req: Request) -> Response:
    from shared.jobs.http import get_job_endpoint, path_job_id

    return await get_job_endpoint(req, path_job_id(req))
