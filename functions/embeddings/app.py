"""FastAPI app of the `embeddings` function: Lambda (Mangum or Lambda Web Adapter) and local runs.

Embeddings (OpenAI-compatible).
"""

from starlette.requests import Request
from starlette.responses import Response

from shared.schemas import Operation
from shared.web import create_app, openai_endpoint, route

app = create_app("embeddings")


@route(app, "/v1/embeddings", methods=["POST"])
async def embeddings(request: Request) -> Response:
    return await openai_endpoint(request, Operation.EMBEDDINGS)
