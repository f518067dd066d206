"""The jobs API through its real adapters: FastAPI app (ASGITransport, as Mangum/uvicorn
serve it), the Lambda handler with an API Gateway v2 event, and the Azure blueprint functions
called the way the Functions host calls them (Starlette request with path params)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from shared.jobs.worker import Attempt, process_message
from shared.storage.queues import get_queue
from tests.fixtures.core import Handler, chat_answer
from tests.fixtures.events import LambdaContext, azure_request, load_event

LINE = {
    "custom_id": "row-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]},
}

_AZURE: dict[str, Any] = {}


def azure_fn(name: str) -> Callable[..., Any]:
    if not _AZURE:
        from tests.e2e.jobs_app import app

        for fn in app.get_functions():
            _AZURE[fn.get_function_name()] = fn
    return _AZURE[name].get_user_function()  # type: ignore[no-any-return]


@pytest.fixture
def api(job_env: Path, fake_endpoint: Callable[[Handler], None]) -> httpx2.AsyncClient:
    from functions.jobs.app import app

    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model", "async hi")))
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")


async def drain_and_run() -> list[str]:
    """Deliver every spooled queue message to the worker once (what a queue trigger does)."""
    texts = get_queue().drain()
    for text in texts:
        await process_message(text, Attempt(1, 5), _ctx())
    return texts


def _ctx() -> Any:
    from shared.context import Context

    return Context.with_timeout(10)


async def test_post_queues_a_job_and_get_reads_its_result(api: httpx2.AsyncClient) -> None:
    r = await api.post("/v1/jobs", json=LINE)
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("job_")
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    queued = (await api.get(r.headers["location"])).json()
    assert queued["status"] == "queued" and queued["custom_id"] == "row-1"
    assert queued["response"] is None and queued["attempts"] == 0
    texts = await drain_and_run()
    assert [json.loads(t)["id"] for t in texts] == [job["id"]]
    done = (await api.get(f"/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["response"]["body"]["choices"][0]["message"]["content"] == "async hi"


async def test_unknown_job_is_404_envelope(api: httpx2.AsyncClient) -> None:
    for path in ("/v1/jobs/job_nope", "/v1/jobs/-not-an-id"):
        r = await api.get(path)
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("line", "param"),
    [
        ({**LINE, "url": "/v1/images/generations"}, "url"),
        ({**LINE, "method": "post"}, "method"),  # OpenAI Batch: "POST", exactly
        ({**LINE, "custom_id": ""}, "custom_id"),
        ({**LINE, "body": {**LINE["body"], "stream": True}}, "stream"),  # answers are whole
        ({**LINE, "body": {"model": "local-model"}}, "messages"),
        ({**LINE, "body_ref": "job-bodies/x.json"}, "body_ref"),
    ],
)
async def test_invalid_lines_are_400_and_queue_nothing(
    api: httpx2.AsyncClient, line: dict[str, Any], param: str | None
) -> None:
    r = await api.post("/v1/jobs", json=line)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert get_queue().drain() == []


async def test_idempotency_key_same_body_same_job_other_body_409(api: httpx2.AsyncClient) -> None:
    headers = {"idempotency-key": "order-42"}
    first = await api.post("/v1/jobs", json=LINE, headers=headers)
    again = await api.post("/v1/jobs", json=LINE, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["status"] == "queued"
    assert again.headers["location"] == first.headers["location"]
    other = {**LINE, "body": {**LINE["body"], "temperature": 0.5}}
    conflict = await api.post("/v1/jobs", json=other, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_conflict"
    assert len(get_queue().drain()) == 1  # one job, one message


async def test_jobs_are_private_to_their_caller_when_keys_are_set(
    api: httpx2.AsyncClient, job_env: Path, clean_env: pytest.MonkeyPatch
) -> None:
    from shared.lifecycle import reset_all

    clean_env.setenv("INFER_API_KEYS", "alpha,beta")
    reset_all()
    r = await api.post("/v1/jobs", json=LINE, headers={"authorization": "Bearer alpha"})
    loc = r.headers["location"]
    assert (await api.get(loc, headers={"authorization": "Bearer alpha"})).status_code == 200
    assert (await api.get(loc, headers={"authorization": "Bearer beta"})).status_code == 404
    assert (await api.get(loc)).status_code == 401


def test_lambda_handler_with_api_gateway_v2_event(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    from functions.jobs.aws import handler

    event = load_event("apigw_v2_chat")
    event["rawPath"] = "/v1/jobs"
    event["requestContext"]["http"]["path"] = "/v1/jobs"
    body = json.dumps(LINE).encode()
    event["body"] = base64.b64encode(body).decode()
    event["isBase64Encoded"] = True
    event["headers"]["content-length"] = str(len(body))
    out = handler(event, LambdaContext(name="jobs"))
    assert out["statusCode"] == 202
    job_id = json.loads(out["body"])["id"]
    assert out["headers"]["location"] == f"/v1/jobs/{job_id}"
    get = load_event("apigw_v2_chat")
    get["rawPath"] = f"/v1/jobs/{job_id}"
    get["requestContext"]["http"].update(method="GET", path=f"/v1/jobs/{job_id}")
    get.pop("body", None)
    get["isBase64Encoded"] = False
    got = handler(get, LambdaContext(name="jobs"))
    assert got["statusCode"] == 200 and json.loads(got["body"])["status"] == "queued"


async def _read(response: Any) -> tuple[int, dict[str, str], bytes]:
    return response.status_code, dict(response.headers), bytes(response.body)


async def test_azure_functions_create_and_get_with_api_prefix(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    req = azure_request("POST", "/api/v1/jobs", json.dumps(LINE).encode())
    status, headers, body = await _read(await azure_fn("jobs_create")(req))
    assert status == 202
    job_id = json.loads(body)["id"]
    assert headers["location"] == f"/api/v1/jobs/{job_id}"
    await drain_and_run()
    # the host fills path_params; without them the id comes from the URL path
    for req in (
        azure_request("GET", f"/api/v1/jobs/{job_id}", id=job_id),
        azure_request("GET", f"/api/v1/jobs/{job_id}"),
    ):
        status, _, body = await _read(await azure_fn("jobs_get")(req))
        assert status == 200 and json.loads(body)["status"] == "succeeded"


def test_blueprint_bindings_match_the_design() -> None:
    from tests.e2e.jobs_app import app

    azure_fn("jobs_get")
    bindings = {name: fn.get_bindings_dict()["bindings"] for name, fn in _AZURE.items()}
    assert bindings["jobs_create"][0]["route"] == "v1/jobs"
    assert bindings["jobs_get"][0]["route"] == "v1/jobs/{id}"
    trigger = bindings["queue_worker"][0]
    assert trigger["type"] == "queueTrigger" and trigger["queueName"] == "inference-requests"
    assert trigger["connection"] == "AzureWebJobsStorage"
    assert app is not None


async def test_job_submissions_are_admitted_against_rate_and_jobs_queued(
    api: httpx2.AsyncClient, clean_env: pytest.MonkeyPatch
) -> None:
    from shared.lifecycle import reset_all

    clean_env.setenv("INFER_LIMITS", json.dumps([{"caller": "*", "max_queued_jobs": 2}]))
    reset_all()
    first = await api.post("/v1/jobs", json=LINE)
    second = await api.post("/v1/jobs", json=LINE)
    assert (first.status_code, second.status_code) == (202, 202)
    third = await api.post("/v1/jobs", json=LINE)
    assert third.status_code == 429 and "jobs queued" in third.json()["error"]["message"]
    assert await drain_and_run()  # the two run and end: their slots are freed
    assert (await api.post("/v1/jobs", json=LINE)).status_code == 202
    # a repeated Idempotency-Key is the same job: it takes no second slot
    same = {"Idempotency-Key": "k-1"}
    assert (await api.post("/v1/jobs", json=LINE, headers=same)).status_code == 202
    assert (await api.post("/v1/jobs", json=LINE, headers=same)).status_code == 200

    clean_env.setenv("INFER_LIMITS", json.dumps([{"caller": "*", "rpm": 2, "window_s": 3600}]))
    reset_all()
    codes = [(await api.post("/v1/jobs", json=LINE)).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
