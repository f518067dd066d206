"""FastAPI app of the `jobs` function (Lambda via Mangum, and local runs)."""

from starlette.requests import Request
from starlette.responses import Response

from shared.jobs.http import create_job_endpoint, get_job_endpoint
from shared.web import create_app, route

app = create_app("jobs")


@route(app, "/v1/jobs", methods=["POST"])
async def create_job(request: Request) -> Response:
    return await create_job_endpoint(request)


@route(app, "/v1/jobs/{id}", methods=["GET"])
async def get_job(request: Request) -> Response:
    return await get_job_endpoint(request, request.path_params["id"])
