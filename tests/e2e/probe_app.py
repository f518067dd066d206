"""The real `probe` blueprint under devhost, plus a test-only route that shows what it saw.

``GET /api/probe-report``: the process's last probe report and the live router's circuit
state per backend (the circuits the HTTP functions of the same process route with).
"""

from __future__ import annotations

import json

import azure.functions as func

from functions.probe.azure import bp as probe
from shared.probe import last_report
from shared.service import get_service

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(probe)


@app.route(route="probe-report", methods=["GET"])
def probe_report(req: func.HttpRequest) -> func.HttpResponse:
    router = get_service().router
    now = router.clock()
    circuits = {s.backend.name: s.circuit.state(now) for s in router.slots}
    body = {"report": last_report(), "circuits": circuits}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")
