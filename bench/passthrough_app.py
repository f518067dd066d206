"""Reference point for bench/overhead.py: the barest FastAPI-to-httpx pass-through.

No validation, no routing, no retries: what any proxy in front of the model costs here.
"""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

app = FastAPI()
UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8081/v1")
_client: httpx.AsyncClient | None = None


def client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000))
    return _client


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    body = await request.body()
    req = client().build_request(
        "POST",
        UPSTREAM + "/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    resp = await client().send(req, stream=True)
    if b'"stream":true' in body.replace(b" ", b""):
        return StreamingResponse(resp.aiter_raw(), media_type="text/event-stream")
    content = await resp.aread()
    await resp.aclose()
    return Response(content, status_code=resp.status_code, media_type="application/json")
