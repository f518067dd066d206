"""FastAPI app of the `chat` function: Lambda (Mangum or Lambda Web Adapter) and local runs.

Chat completions, plain JSON or SSE stream (OpenAI-compatible).
"""

from starlette.requests import Request
from starlette.responses import Response

from shared.schemas import Operation
from shared.web import create_app, openai_endpoint, route

app = create_app("chat")


@route(app, "/v1/chat/completions", methods=["POST"])
async def chat_completions(request: Request) -> Response:
    return await openai_endpoint(request, Operation.CHAT)
