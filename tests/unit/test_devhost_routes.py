"""Route templates and HTTP dispatch of devhost (in-process ASGI, no sockets)."""

from __future__ import annotations

import azure.functions as func
import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from tools.devhost.http import HttpApp
from tools.devhost.invoke import Invoker
from tools.devhost.registry import describe
from tools.devhost.routes import RouteError, RouteTemplate
from tools.devhost.storage import Storage


@pytest.mark.parametrize(
    ("route", "path", "params"),
    [
        ("v1/jobs/{id}", "/api/v1/jobs/abc", {"id": "abc"}),
        ("v1/jobs/{id}", "/api/V1/Jobs/abc/", {"id": "abc"}),
        ("v1/jobs/{id}", "/api/v1/jobs", None),
        ("v1/jobs/{id}", "/api/v1/jobs/a/b", None),
        ("items/{id?}", "/api/items", {}),
        ("items/{id:int}", "/api/items/12", {"id": "12"}),
        ("items/{id:int}", "/api/items/x", None),
        ("files/{*rest}", "/api/files/a/b.txt", {"rest": "a/b.txt"}),
        ("files/{*rest}", "/api/files", {}),
        ("{name}.json", "/api/report.json", {"name": "report"}),
    ],
)
def test_templates_match(route: str, path: str, params: dict[str, str] | None) -> None:
    assert RouteTemplate.compile("api", route).match(path) == params


def test_empty_prefix_and_bad_templates() -> None:
    assert RouteTemplate.compile("", "healthz").match("/healthz") == {}
    with pytest.raises(RouteError):
        RouteTemplate.compile("api", "{*rest}/more")
    with pytest.raises(RouteError):
        RouteTemplate.compile("api", "{not-a-name}")


def _app() -> HttpApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="jobs/{id}", methods=["GET"])
    async def job(req: Request) -> JSONResponse:
        return JSONResponse({"job": req.path_params["id"]})

    @app.route(route="jobs/latest", methods=["GET"])
    def latest(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("latest", status_code=200)

    @app.route(route="jobs", methods=["POST"])
    def create(req: func.HttpRequest) -> dict[str, object]:
        return {"got": req.get_json()}

    specs = [describe(f) for f in app.get_functions()]
    return HttpApp(specs, "api", Invoker(Storage({}), message_encoding="base64"))


async def test_dispatch_prefers_literal_routes_and_converts_results() -> None:
    transport = httpx2.ASGITransport(app=_app())
    async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/api/jobs/7")).json() == {"job": "7"}
        assert (await client.get("/api/jobs/latest")).text == "latest"
        created = await client.post("/api/jobs", json={"a": 1})
        assert created.json() == {"got": {"a": 1}}
        assert (await client.post("/api/jobs/7")).status_code == 405
        assert (await client.get("/api/other")).status_code == 404
