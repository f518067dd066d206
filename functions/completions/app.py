"""FastAPI app of the `completions` function: Lambda (Mangum or Lambda Web Adapter) and local runs.

Text completions (OpenAI-compatible), plain or streamed.
"""

from starlette.requests import Request
from starlette.responses import Response

from shared.schemas import Operation
from shared.web import create_app, openai_endpoint, route

app = create_app("completions")


@route(app, "/v1/completions", methods=["POST"])
async def completions(request: Request) -> Response:
    return await openai_endpoint(request, Operation.COMPLETIONS)
