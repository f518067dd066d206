"""FastAPI app of the `models` function: Lambda (Mangum or Lambda Web Adapter) and local runs.

The models this deployment routes (OpenAI list shape), and the caller's usage of its limits.
"""

from starlette.requests import Request
from starlette.responses import Response

from shared.web import create_app, models_endpoint, route, usage_endpoint

app = create_app("models")


@route(app, "/v1/models", methods=["GET"])
async def list_models(request: Request) -> Response:
    return await models_endpoint(request)


@route(app, "/v1/usage", methods=["GET"])
async def usage(request: Request) -> Response:
    return await usage_endpoint(request)
