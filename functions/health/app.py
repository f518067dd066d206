"""FastAPI app of the `health` function: Lambda (Mangum or Lambda Web Adapter) and local runs.

Liveness (/healthz) and readiness (/readyz: settings valid, a backend answers).
"""

from starlette.requests import Request
from starlette.responses import Response

from shared.web import create_app, healthz_endpoint, readyz_endpoint, route

app = create_app("health")


@route(app, "/healthz", methods=["GET"])
async def healthz(request: Request) -> Response:
    return await healthz_endpoint(request)


@route(app, "/readyz", methods=["GET"])
async def readyz(request: Request) -> Response:
    return await readyz_endpoint(request)
