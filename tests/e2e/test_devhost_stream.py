"""devhost's blob InputStream reads lazily from Azurite instead of preloading the blob."""

from __future__ import annotations

import io
import uuid

import pytest

from tests.fixtures.azurite import Azurite
from tools.devhost.blobs import BlobInputStream
from tools.devhost.storage import CHUNK_BYTES, Storage

pytestmark = pytest.mark.e2e


def test_input_stream_downloads_only_what_is_read(azurite: Azurite) -> None:
    storage = Storage({"AzureWebJobsStorage": azurite.connection_string})
    container = storage.container(None, f"s{uuid.uuid4().hex[:12]}")
    lines = [f"line {i:07d}".encode() + b"\n" for i in range(400_000)]  # ~5.2 MB
    data = b"".join(lines)
    container.upload_blob("big.jsonl", data)
    client = container.get_blob_client("big.jsonl")
    stream = BlobInputStream(client, client.get_blob_properties())

    assert stream.bytes_downloaded == 0  # nothing fetched before the first read
    assert stream.length == len(data)
    assert stream.readline() == lines[0]
    assert stream.read(5) == lines[1][:5]
    assert 0 < stream.bytes_downloaded <= CHUNK_BYTES  # one chunk, not 5 MB
    rest = stream.read()
    assert lines[1][:5] + rest == b"".join(lines[1:])
    assert stream.read() == b""


def test_input_stream_works_with_text_wrappers(azurite: Azurite) -> None:
    storage = Storage({"AzureWebJobsStorage": azurite.connection_string})
    container = storage.container(None, f"s{uuid.uuid4().hex[:12]}")
    container.upload_blob("t.jsonl", "é1\né2\n".encode())
    client = container.get_blob_client("t.jsonl")
    stream = BlobInputStream(client, client.get_blob_properties())
    assert list(io.TextIOWrapper(stream, encoding="utf-8")) == ["é1\n", "é2\n"]
