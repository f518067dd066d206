"""FastAPI app of the `jobs` function (Lambda via Mangum, and local runs)."""

from starlette.requests import Request
from starlette.responses import Response

from shared.jobs.http import create_job_endpoint, get_job_endpoint
from shared.web import create_app

app = create_app("jobs")


@app.post("/v1/jobs")
async def create_job(request: Request) -> Response:
    return await create_job_endpoint(request)


@app.get("/v1/jobs/{id}")
async def get_job(request: Request, id: str) -> Response:
    return await get_job_endpoint(request, id)
