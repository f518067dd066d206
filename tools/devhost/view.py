"""The local view: a small page at ``/_metrics/view`` that charts devhost's ``/metrics``.

Static files in ``tools/devhost/view/`` (HTML, CSS and vanilla JavaScript drawing SVG): the
page needs nothing from the internet, and it polls ``/metrics`` from the browser, so devhost
does no work for it beyond serving the Prometheus text it already serves.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse, RedirectResponse, Response

PREFIX = "/_metrics/"
VIEW_PATH = PREFIX + "view"
_DIR = Path(__file__).with_name("view")
_FILES = {
    "view": ("index.html", "text/html; charset=utf-8"),
    "view.js": ("view.js", "text/javascript; charset=utf-8"),
    "view.css": ("view.css", "text/css; charset=utf-8"),
}


def view_response(path: str) -> Response:
    """``/_metrics/view`` and its assets; ``/_metrics/`` redirects to the page."""
    name = path[len(PREFIX) :]
    if name == "":
        return RedirectResponse(VIEW_PATH, status_code=307)
    found = _FILES.get(name)
    if found is None:
        return Response(status_code=404)
    filename, media_type = found
    headers = {"cache-control": "no-cache"}
    return FileResponse(_DIR / filename, media_type=media_type, headers=headers)
