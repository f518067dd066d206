"""devhost configuration: host.json, local.settings.json, setting expressions, encodings."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from tools.devhost.config import (
    ConfigError,
    QueueOptions,
    apply_local_settings,
    host_processor_count,
    load_host_json,
    parse_host_json,
    parse_timespan,
    resolve_setting_expressions,
)
from tools.devhost.queues import retry_delay
from tools.devhost.storage import connection_string, decode_message, encode_message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("00:00:30", 30.0), ("00:01:00.5", 60.5), ("1.02:00:00", 93600.0), (2, 2.0), (0.25, 0.25)],
)
def test_timespans_parse_like_dotnet(value: object, seconds: float) -> None:
    assert parse_timespan(value, name="x") == seconds


def test_bad_timespan_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="visibilityTimeout"):
        parse_host_json({"extensions": {"queues": {"visibilityTimeout": "soon"}}})


def test_host_json_defaults_match_the_host(tmp_path: Path) -> None:
    config = load_host_json(tmp_path / "missing.json")
    assert config.route_prefix == "api"
    q = config.queues
    assert (q.batch_size, q.max_dequeue_count, q.visibility_timeout_s, q.message_encoding) == (
        16,
        5,
        0.0,
        "base64",
    )
    # newBatchThreshold defaults to batchSize / 2 per processor
    assert q.fetch_threshold == 8 * host_processor_count(os.environ)


def test_the_default_new_batch_threshold_scales_with_processors_except_on_consumption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queues = {"extensions": {"queues": {"batchSize": 32}}}
    assert parse_host_json(queues, processor_count=1).queues.fetch_threshold == 16
    assert parse_host_json(queues, processor_count=2).queues.fetch_threshold == 32
    explicit = {"extensions": {"queues": {"batchSize": 32, "newBatchThreshold": 4}}}
    assert parse_host_json(explicit, processor_count=2).queues.fetch_threshold == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert host_processor_count({}) == 4
    assert host_processor_count({"WEBSITE_SKU": "ElasticPremium"}) == 4
    assert host_processor_count({"WEBSITE_SKU": "Dynamic"}) == 1  # Consumption: one
    assert host_processor_count({"WEBSITE_SKU": "dynamic"}) == 1


def test_host_json_values_are_read() -> None:
    config = parse_host_json(
        {
            "extensions": {
                "http": {"routePrefix": ""},
                "queues": {
                    "batchSize": 4,
                    "newBatchThreshold": 1,
                    "maxDequeueCount": 2,
                    "visibilityTimeout": "00:00:10",
                    "messageEncoding": "none",
                },
            },
            "functionTimeout": "00:10:00",
        }
    )
    assert config.route_prefix == ""
    assert config.queues.fetch_threshold == 1
    assert config.queues.visibility_timeout_s == 10.0
    assert config.queues.message_encoding == "none"
    assert config.function_timeout_s == 600.0


@pytest.mark.parametrize(
    "queues", [{"batchSize": 64}, {"maxDequeueCount": 0}, {"messageEncoding": "utf8"}]
)
def test_invalid_queue_options_are_rejected(queues: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_host_json({"extensions": {"queues": queues}})


def test_local_settings_fill_only_unset_variables(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"A": "file", "B": "file", "N": 3}}))
    env = {"A": "env"}
    assert apply_local_settings(path, env) == ["B", "N"]
    assert env == {"A": "env", "B": "file", "N": "3"}


def test_setting_expressions_resolve_or_name_the_missing_setting() -> None:
    assert resolve_setting_expressions("%Q%-poison", {"Q": "jobs"}) == "jobs-poison"
    with pytest.raises(ConfigError, match="'MISSING'"):
        resolve_setting_expressions("%MISSING%", {})


def test_connection_resolution() -> None:
    assert connection_string(None, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}) == (
        "UseDevelopmentStorage=true"
    )
    assert connection_string("Other", {"Other": "x"}) == "x"
    with pytest.raises(ConfigError, match="identity-based"):
        connection_string(None, {"AzureWebJobsStorage__accountName": "acct"})
    with pytest.raises(ConfigError, match="'Jobs' is not set"):
        connection_string("Jobs", {})


def test_base64_decoding_is_strict() -> None:
    body = "héllo".encode()
    text = encode_message(body, "base64")
    assert text == base64.b64encode(body).decode()
    assert decode_message(text, "base64") == body
    with pytest.raises(ValueError, match="base64"):
        decode_message("not base64!", "base64")
    with pytest.raises(ValueError, match="base64"):
        decode_message("é", "base64")
    assert decode_message("plain {json}", "none") == b"plain {json}"


def test_retry_delay_is_host_json_visibility_timeout_only() -> None:
    # As the deployed host: no exception attribute or return value can change it.
    assert retry_delay(QueueOptions(visibility_timeout_s=5.0)) == 5
    assert retry_delay(QueueOptions()) == 0


def test_workers_split_what_the_host_keeps_in_flight() -> None:
    from tools.devhost.workers import share_queue_options

    one = QueueOptions(batch_size=16)
    assert share_queue_options(one, 1) is one
    two = share_queue_options(one, 2)
    assert (two.batch_size, two.fetch_threshold) == (8, 4)  # 2 x (8 + 4) = 16 + 8, as one host
    three = share_queue_options(QueueOptions(batch_size=16, new_batch_threshold=5), 3)
    assert (three.batch_size, three.new_batch_threshold) == (6, 2)
    dual = share_queue_options(QueueOptions(batch_size=32, processor_count=2), 2)
    assert (dual.batch_size, dual.fetch_threshold) == (16, 16)  # 2 x (16 + 16) = 32 + 32


def test_worker_count_comes_from_the_flag_else_the_app_setting() -> None:
    from tools.devhost.workers import worker_count

    assert worker_count(None, {}) == 1
    assert worker_count(None, {"FUNCTIONS_WORKER_PROCESS_COUNT": "3"}) == 3
    assert worker_count(2, {"FUNCTIONS_WORKER_PROCESS_COUNT": "3"}) == 2
    with pytest.raises(ValueError, match=r"1\.\.10"):
        worker_count(11, {})
    with pytest.raises(ValueError, match="whole number"):
        worker_count(None, {"FUNCTIONS_WORKER_PROCESS_COUNT": "two"})
