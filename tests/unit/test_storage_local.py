"""The local-directory object store and the storage factory (no sockets)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.lifecycle import reset_all
from shared.storage import PreconditionFailed, get_store, provider
from shared.storage.base import ObjectNotFound, ObjectStore
from shared.storage.local import LocalStore
from shared.storage.queues import AZURE_LIMIT, LocalQueue, claim_check, get_queue, load_body_ref


def test_put_get_roundtrip_and_etag_follows_content(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "jobs")
    assert isinstance(store, ObjectStore)
    assert store.get("a.json") is None
    e1 = store.put("a.json", b"one")
    got = store.get("a.json")
    assert got is not None and got.data == b"one" and got.etag == e1
    e2 = store.put("a.json", b"two")
    assert e2 != e1 and store.get("a.json").data == b"two"  # type: ignore[union-attr]


def test_if_none_match_creates_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "jobs")
    store.put("k", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"second", if_none_match=True)
    assert store.get("k").data == b"first"  # type: ignore[union-attr]


def test_if_match_is_compare_and_swap(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "jobs")
    old = store.put("k", b"v1")
    new = store.put("k", b"v2", if_match=old)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"v3", if_match=old)
    assert store.get("k").data == b"v2"  # type: ignore[union-attr]
    store.put("k", b"v3", if_match=new)
    with pytest.raises(PreconditionFailed):
        store.put("missing", b"x", if_match=new)
    assert store.get("missing") is None


def test_open_read_streams_in_pieces(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "batch-in")
    store.put("big.jsonl", b"x" * 100_000)
    reader = store.open_read("big.jsonl")
    try:
        first = reader.read(1000)
        rest = reader.read()
    finally:
        reader.close()
    assert len(first) == 1000 and len(rest) == 99_000
    with pytest.raises(ObjectNotFound):
        store.open_read("nope")


def test_list_prefix_nested_keys_and_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "ns")
    for key in ("a/1.json", "a/2.json", "b/1.json", "top.json"):
        store.put(key, b"{}")
    store.put("a/3.json", b"{}", if_none_match=True)  # takes the lock file: not listed
    assert store.list("a/") == ["a/1.json", "a/2.json", "a/3.json"]
    assert store.list() == ["a/1.json", "a/2.json", "a/3.json", "b/1.json", "top.json"]
    store.delete("a/1.json")
    store.delete("a/1.json")  # missing: not an error
    assert store.list("a/") == ["a/2.json", "a/3.json"]


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "", ".hidden", "a//b"])
def test_keys_cannot_escape_the_namespace(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        LocalStore(tmp_path, "ns").put(key, b"x")


def _increment(root: str, n: int) -> None:
    store = LocalStore(root, "ns")
    for _ in range(n):
        while True:
            cur = store.get("counter")
            assert cur is not None
            value = json.loads(cur.data) + 1
            try:
                store.put("counter", json.dumps(value).encode(), if_match=cur.etag)
                break
            except PreconditionFailed:
                continue


def test_conditional_writes_are_safe_across_processes(tmp_path: Path) -> None:
    LocalStore(tmp_path, "ns").put("counter", b"0")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_increment, args=(str(tmp_path), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert json.loads(LocalStore(tmp_path, "ns").get("counter").data) == 160  # type: ignore[union-attr]


def test_provider_follows_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("AzureWebJobsStorage", "INFER_STORE", "INFER_BUCKET"):
        clean_env.delenv(key, raising=False)
    assert provider() == "local"
    clean_env.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    assert provider() == "azure"
    clean_env.setenv("INFER_BUCKET", "b")
    assert provider() == "s3"
    clean_env.setenv("INFER_STORE", "local")
    assert provider() == "local"
    clean_env.setenv("INFER_STORE", "ftp")
    with pytest.raises(ConfigError, match="INFER_STORE"):
        provider()


def test_get_store_builds_once_per_namespace(job_env: Path) -> None:
    a = get_store("jobs")
    assert get_store("jobs") is a and get_store("other") is not a
    assert isinstance(a, LocalStore) and a.base == (job_env / "jobs").resolve()
    reset_all()
    assert get_store("jobs") is not a


def test_claim_check_moves_big_bodies_to_the_store(job_env: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * (AZURE_LIMIT + 10)}]}
    text = claim_check({"id": "j1", "url": "/v1/chat/completions", "body": body}, AZURE_LIMIT)
    message = json.loads(text)
    assert "body" not in message and message["body_ref"].startswith("job-bodies/")
    assert len(text) < 1000
    assert load_body_ref(message["body_ref"]) == body
    small = claim_check({"id": "j2", "body": {"a": 1}}, AZURE_LIMIT)
    assert json.loads(small) == {"id": "j2", "body": {"a": 1}}
    with pytest.raises(LookupError):
        load_body_ref("job-bodies/gone.json")


def test_local_queue_spools_messages_in_order_and_honours_delay(job_env: Path) -> None:
    queue = get_queue()
    assert isinstance(queue, LocalQueue) and get_queue() is queue
    queue.send({"n": 1})
    queue.send({"n": 2})
    queue.send({"n": 3}, delay_s=60)
    assert [json.loads(t)["n"] for t in queue.drain()] == [1, 2]
    assert queue.drain() == []
