"""The ``ObjectStore`` base class: the flow and the defaults a five-primitive store inherits."""

from __future__ import annotations

import pytest

from shared.storage import ObjectNotFound
from shared.storage.base import Condition, ObjectInfo, read_chunks
from tests.fixtures.batch import MemoryStore


class Trickle:
    """A reader that returns at most ``step`` bytes a call, as a socket may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step, self.closed = data, 0, step, False

    def read(self, size: int = -1, /) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def close(self) -> None:
        self.closed = True


class TrickleStore(MemoryStore):
    def open_read(self, key: str) -> Trickle:  # type: ignore[override]
        if (obj := self.get(key)) is None:
            raise ObjectNotFound(key)
        self.last = Trickle(obj.data, 7)
        return self.last


def test_condition_allows_what_each_write_kind_promises() -> None:
    assert Condition().allows(None) and Condition().allows('"e1"')
    assert Condition(if_none_match=True).allows(None)
    assert not Condition(if_none_match=True).allows('"e1"')
    assert Condition(if_match='"e1"').allows('"e1"')
    assert not Condition(if_match='"e1"').allows('"e2"')
    assert not Condition(if_match='"e1"').allows(None)
    assert not Condition().conditional and Condition(if_match="x").conditional


def test_read_chunks_takes_exactly_length_from_short_reads() -> None:
    reader = Trickle(bytes(range(100)), 7)
    assert b"".join(read_chunks(reader, 30)) == bytes(range(30))
    assert b"".join(read_chunks(reader, 0)) == b""
    assert b"".join(read_chunks(reader)) == bytes(range(30, 100))
    assert list(read_chunks(reader, 5)) == []  # at the end: nothing, no error


@pytest.mark.parametrize(("start", "end"), [(0, None), (0, 100), (13, 14), (50, None), (99, 100)])
def test_default_stream_skips_and_stops_on_short_reads(start: int, end: int | None) -> None:
    store = TrickleStore("ns")
    data = bytes(range(100))
    store.put("k", data)
    assert b"".join(store.stream("k", start, end)) == data[start:end]
    assert store.last.closed


def test_a_store_of_five_primitives_gets_stat_stream_and_concat() -> None:
    dest, source = MemoryStore("out"), MemoryStore("work")
    source.put("a", b"one\n")
    source.put("b", b"two\n")
    dest.concat("all.jsonl", source, ["b", "a"])
    got = dest.get("all.jsonl")
    assert got is not None and got.data == b"two\none\n"
    assert dest.stat("all.jsonl") == ObjectInfo(8, got.etag)
    assert b"".join(dest.stream("all.jsonl", 4, 8)) == b"one\n"
    with pytest.raises(ObjectNotFound):
        dest.concat("all.jsonl", source, ["a", "missing"])
    assert dest.get("all.jsonl") == got, "a failed concat leaves the previous object"
    with pytest.raises(ValueError):
        dest.put("x", b"", if_match=got.etag, if_none_match=True)
