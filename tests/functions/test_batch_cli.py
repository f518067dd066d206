"""`python -m tools.cli batch ...` against Azurite and moto: submit, status, fetch, --watch."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.azurite import Azurite
from tests.fixtures.batch import gpusim_backend, make_input, read_jsonl
from tests.fixtures.events import LambdaContext, load_event
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.moto import MotoServer
from tools.cli.__main__ import main, progress_line


def test_progress_line_is_plain_text() -> None:
    st = {
        "status": "in_progress",
        "progress": {"bytes_done": 50, "bytes_total": 200},
        "request_counts": {"completed": 9, "failed": 1},
        "usage": {"total_tokens": 40},
    }
    line = progress_line(st, width=8)
    assert line.startswith("[##------]  25.0%  in_progress  ok 9  failed 1  tokens 40")


def test_submit_watch_status_fetch_on_s3(
    batch_env: pytest.MonkeyPatch,
    moto_env: MotoServer,
    gpusim: Gpusim,
    lambda_context: Callable[..., LambdaContext],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from functions.batch.aws import handler
    from shared.storage.s3 import aws_client

    batch_env.setenv("INFER_BUCKET", "cli-bucket")
    batch_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    aws_client("s3").create_bucket(Bucket="cli-bucket")
    data, good, bad = make_input(30, bad_every=10)
    src = tmp_path / "nightly.jsonl"
    src.write_bytes(data)
    s3 = ["--s3-bucket", "cli-bucket", "--endpoint-url", moto_env.url]
    codes: list[int] = []
    watcher = threading.Thread(
        target=lambda: codes.append(main(["batch", "submit", str(src), "--watch",
                                          "--interval", "0.1", "--timeout", "30", *s3]))
    )  # fmt: skip
    watcher.start()
    deadline = time.monotonic() + 10  # the S3 event, once the upload is there
    while aws_client("s3").list_objects_v2(Bucket="cli-bucket").get("KeyCount", 0) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    event = json.loads(json.dumps(load_event("s3_put")).replace("daily+run+%282025%29", "nightly"))
    handler(event, lambda_context(60, "batch"))
    watcher.join(30)
    assert codes == [0]
    out = capsys.readouterr().out
    assert "uploaded batch-in/nightly.jsonl" in out and "100.0%  completed" in out
    assert main(["batch", "status", "nightly", "--json", *s3]) == 0
    assert json.loads(capsys.readouterr().out)["request_counts"]["failed"] == bad
    assert main(["batch", "fetch", "nightly", "-o", str(tmp_path / "got"), *s3]) == 0
    got = read_jsonl((tmp_path / "got" / "nightly.output.jsonl").read_bytes())
    assert {r["custom_id"] for r in got} == good


def test_submit_and_fetch_on_azure(azurite: Azurite, tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "cli-az.jsonl"
    src.write_bytes(b'{"custom_id": "a"}\n')
    conn = ["--connection-string", azurite.connection_string]
    assert main(["batch", "submit", str(src), *conn]) == 0
    blob = azurite.blob_service().get_blob_client("batch-in", "cli-az.jsonl")
    assert blob.download_blob().readall() == src.read_bytes()
    assert main(["batch", "status", "cli-az-missing", *conn]) == 1
    assert main(["batch", "fetch", "cli-az-missing", "-o", str(tmp_path), *conn]) == 1
