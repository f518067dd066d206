"""devhost checks function keys as the deployed host does, and the app's default is FUNCTION.

The real app (function_app.py) with ``INFER_AUTH_LEVEL`` unset and no inbound keys: model
routes need a function key (``x-functions-key`` or ``?code=``), health routes do not; a
missing or wrong key is a 401 with an empty body. Without ``DEVHOST_FUNCTION_KEYS`` devhost
makes a key up and prints it.
"""

from __future__ import annotations

import json
import re

import httpx2
import pytest

from tests.fixtures.devhost import DevhostFactory
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import ROOT

pytestmark = pytest.mark.e2e
NO_SETTINGS = ["--no-queues", "--no-blobs", "--settings", "no-local-settings.json"]


def backends(sim: Gpusim) -> str:
    return json.dumps(
        [{"name": "sim", "kind": "openai", "base_url": sim.v1, "models": ["local-model"]}]
    )


def test_model_routes_need_a_function_key_by_default(
    devhost_factory: DevhostFactory, gpusim: Gpusim
) -> None:
    env = {"INFER_BACKENDS": backends(gpusim), "DEVHOST_FUNCTION_KEYS": "key-one,key-two",
           "DEVHOST_MASTER_KEY": "the-master"}  # fmt: skip
    host = devhost_factory(app_module="function_app", app_dir=ROOT, env=env, args=NO_SETTINGS)
    with httpx2.Client(base_url=host.url + "/api", timeout=30) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.content == b""
        assert c.get("/v1/models", headers={"x-functions-key": "nope"}).status_code == 401
        assert c.get("/v1/models", headers={"x-functions-key": "key-one"}).status_code == 200
        assert c.get("/v1/models", params={"code": "key-two"}).status_code == 200
        assert c.get("/v1/models", headers={"x-functions-key": "the-master"}).status_code == 200
        # The app's own check does not count for the host: a Bearer key is not a function key.
        assert c.get("/v1/models", headers={"authorization": "Bearer key-one"}).status_code == 401
        chat = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}
        assert c.post("/v1/chat/completions", json=chat).status_code == 401
        r = c.post("/v1/chat/completions", json=chat, headers={"x-functions-key": "key-one"})
        assert r.status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key
        assert c.get("/readyz").status_code == 200


def test_a_generated_key_is_printed_and_works(
    devhost_factory: DevhostFactory, gpusim: Gpusim
) -> None:
    host = devhost_factory(
        app_module="function_app", app_dir=ROOT, env={"INFER_BACKENDS": backends(gpusim)},
        args=NO_SETTINGS,
    )  # fmt: skip
    found = re.search(r"Function key \(generated[^)]*\): (\S+)", host.log())
    assert found, host.log()
    with httpx2.Client(base_url=host.url + "/api", timeout=30) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", params={"code": found[1]}).status_code == 200


def test_inbound_api_keys_make_the_host_check_anonymous(
    devhost_factory: DevhostFactory, gpusim: Gpusim
) -> None:
    env = {"INFER_BACKENDS": backends(gpusim), "INFER_API_KEYS": "app-key"}
    host = devhost_factory(app_module="function_app", app_dir=ROOT, env=env, args=NO_SETTINGS)
    with httpx2.Client(base_url=host.url + "/api", timeout=30) as c:
        assert c.get("/v1/models").status_code == 401  # the app's own check, with a body
        r = c.get("/v1/models", headers={"authorization": "Bearer app-key"})
        assert r.status_code == 200


def test_a_timer_whose_schedule_setting_is_missing_is_disabled_not_fatal(
    devhost_factory: DevhostFactory, gpusim: Gpusim
) -> None:
    """As the host: the probe's %INFER_PROBE_SCHEDULE% cannot be resolved, so that function
    fails indexing and is disabled; the host and every other function still run."""
    env = {"INFER_BACKENDS": backends(gpusim), "INFER_AUTH_LEVEL": "ANONYMOUS"}
    args = ["--no-queues", "--no-blobs", "--settings", "no-local-settings.json"]
    host = devhost_factory(app_module="function_app", app_dir=ROOT, env=env, args=args)
    with httpx2.Client(base_url=host.url + "/api", timeout=30) as c:
        assert c.get("/v1/models").status_code == 200
    assert "function 'probe' failed indexing and will be disabled" in host.log()
    assert "INFER_PROBE_SCHEDULE" in host.log()
