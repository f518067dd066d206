"""devhost's local view routes: the page and its assets outside the function routes."""

from __future__ import annotations

import httpx2

from tools.devhost.http import HttpApp
from tools.devhost.invoke import Invoker
from tools.devhost.storage import Storage


async def get(path: str) -> httpx2.Response:
    app = HttpApp([], "api", Invoker(Storage(), message_encoding="base64"))
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://devhost") as client:
        return await client.get(path)


async def test_page_and_assets_are_served() -> None:
    page = await get("/_metrics/view")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="view.js"' in page.text and 'id="ttft-p50"' in page.text
    script = await get("/_metrics/view.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert 'fetch("/metrics"' in script.text
    # nothing from the internet: no absolute URL in the page, only the SVG namespace in the script
    assert "http" not in page.text
    assert "https://" not in script.text
    css = await get("/_metrics/view.css")
    assert css.headers["content-type"].startswith("text/css")


async def test_prefix_redirects_and_unknown_files_are_404() -> None:
    root = await get("/_metrics/")
    assert root.status_code == 307 and root.headers["location"] == "/_metrics/view"
    assert (await get("/_metrics/../host.json")).status_code == 404
    assert (await get("/_metrics/nope.js")).status_code == 404
