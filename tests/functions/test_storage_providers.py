"""One contract, every provider: the dict fake, a local directory, Azurite and moto server.

Batch reads inputs with ``stat`` and ``stream`` and writes results with ``concat``; these are
``ObjectStore`` methods now, so each provider is checked against the same expectations. The
cloud stores get an injected service/client and no storage settings at all in the
environment: anything that reached past the store for a process-wide client would fail.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.storage import ObjectNotFound, ObjectStore, PreconditionFailed
from tests.fixtures.batch import MemoryStore

PROVIDERS = ["memory", "local", "azure", "s3"]
MiB = 1024 * 1024


def _azure(request: pytest.FixtureRequest) -> Iterator[tuple[ObjectStore, ObjectStore]]:
    from shared.storage.azure_blob import AzureBlobStore

    svc = request.getfixturevalue("azurite").blob_service()
    names = [f"t{uuid.uuid4().hex[:12]}-{n}" for n in ("a", "b")]
    yield AzureBlobStore(names[0], service=svc), AzureBlobStore(names[1], service=svc)
    from azure.core.exceptions import ResourceNotFoundError

    for name in names:
        with contextlib.suppress(ResourceNotFoundError):  # a store never written to
            svc.delete_container(name)


def _s3(request: pytest.FixtureRequest) -> Iterator[tuple[ObjectStore, ObjectStore]]:
    import boto3

    from shared.storage.s3 import S3Store
    from tests.fixtures.moto import AWS_ENV

    moto = request.getfixturevalue("moto_server")
    client = boto3.client(
        "s3",
        endpoint_url=moto.url,
        region_name=AWS_ENV["AWS_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3Store(bucket, "ns-a", client=client), S3Store(bucket, "ns-b", client=client)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    moto.reset()


@pytest.fixture(params=PROVIDERS)
def pair(
    request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[ObjectStore, ObjectStore]]:
    """Two stores of one provider (two namespaces): a destination and a source of parts."""
    for key in ("AzureWebJobsStorage", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        clean_env.delenv(key, raising=False)
    from shared.lifecycle import reset_all

    reset_all()
    if request.param == "memory":
        yield MemoryStore("a"), MemoryStore("b")
    elif request.param == "local":
        from shared.storage.local import LocalStore

        yield LocalStore(tmp_path, "a"), LocalStore(tmp_path, "b")
        assert not list(tmp_path.rglob(".tmp-*")), "no temp file left behind"
    elif request.param == "azure":
        yield from _azure(request)
    else:
        yield from _s3(request)


def _blob(n: int, seed: int = 0) -> bytes:
    """``n`` bytes in a period of 251 (a prime): a range read from the wrong offset shows."""
    period = bytes((i + seed) % 251 for i in range(251))
    return (period * (n // 251 + 1))[:n]


def test_stat_gives_size_and_the_etag_get_gives(pair: tuple[ObjectStore, ObjectStore]) -> None:
    store, _ = pair
    etag = store.put("in/x.jsonl", b"abc\n", content_type="application/jsonl")
    got = store.get("in/x.jsonl")
    info = store.stat("in/x.jsonl")
    assert got is not None and info is not None
    assert info == (4, etag) and info.size == 4 and info.etag == got.etag
    assert store.stat("in/missing.jsonl") is None


def test_stream_reads_exactly_the_range(pair: tuple[ObjectStore, ObjectStore]) -> None:
    store, _ = pair
    data = _blob(9 * MiB + 123)  # more than two 4 MiB chunks
    store.put("big.bin", data)
    n = len(data)
    for start, end in [(0, None), (0, n), (5, 105), (4 * MiB - 1, 8 * MiB + 2), (n - 3, n)]:
        chunks = list(store.stream("big.bin", start, end))
        assert b"".join(chunks) == data[start:end], (start, end)
        assert all(0 < len(c) <= 4 * MiB for c in chunks)
    assert list(store.stream("big.bin", 10, 10)) == []
    assert list(store.stream("big.bin", n, n)) == []
    with pytest.raises(ObjectNotFound):
        list(store.stream("missing.bin", 0, 10))


def test_concat_joins_the_parts_in_order(pair: tuple[ObjectStore, ObjectStore]) -> None:
    dest, source = pair
    sizes = [3 * MiB, 10, 6 * MiB + 1, 1]  # a multi-block blob, a two-part S3 upload
    blobs = {f"run/{i:03d}.out.jsonl": _blob(size, seed=i) for i, size in enumerate(sizes)}
    parts = list(blobs)
    for key, data in blobs.items():
        source.put(key, data)
    dest.put("merged.jsonl", b"previous")
    dest.concat("merged.jsonl", source, parts[::-1])
    got = dest.get("merged.jsonl")
    assert got is not None and got.data == b"".join(blobs[k] for k in parts[::-1])
    assert dest.stat("merged.jsonl") == (len(got.data), got.etag)


def test_concat_of_no_parts_is_an_empty_object(pair: tuple[ObjectStore, ObjectStore]) -> None:
    dest, source = pair
    dest.concat("empty.jsonl", source, [])
    got = dest.get("empty.jsonl")
    assert got is not None and got.data == b""


def test_a_missing_part_leaves_the_previous_object(pair: tuple[ObjectStore, ObjectStore]) -> None:
    dest, source = pair
    source.put("p/1", _blob(9 * MiB))  # enough for S3 to have begun a multipart upload
    dest.put("out.jsonl", b"old result\n")
    with pytest.raises(ObjectNotFound):
        dest.concat("out.jsonl", source, ["p/1", "p/gone"])
    got = dest.get("out.jsonl")
    assert got is not None and got.data == b"old result\n"
    assert dest.list() == ["out.jsonl"]


def test_conditional_puts_are_compare_and_swap(pair: tuple[ObjectStore, ObjectStore]) -> None:
    store, _ = pair
    first = store.put("ckpt.json", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("ckpt.json", b"2", if_none_match=True)
    second = store.put("ckpt.json", b"2", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("ckpt.json", b"3", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("never.json", b"x", if_match=second)
    with pytest.raises(ValueError):
        store.put("ckpt.json", b"4", if_match=second, if_none_match=True)
    got = store.get("ckpt.json")
    assert got is not None and got.data == b"2" and got.etag == second
    assert store.list() == ["ckpt.json"]
