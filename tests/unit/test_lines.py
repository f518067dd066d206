"""The one line splitter and the one reader of SSE ``data:`` events (shared/lines.py)."""

from __future__ import annotations

import json
import random

from shared.lines import LineSplitter, data_events, usage_from_tail

TEXT = b'data: {"a":1}\r\n\r\ndata: {"b":"\xc3\xa9"}\n\n: comment\nlast line without newline\r'


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), rng.randint(0, 6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_lines_are_the_same_wherever_the_pieces_split() -> None:
    rng = random.Random(3)
    want = [b'data: {"a":1}', b"", b'data: {"b":"\xc3\xa9"}', b"", b": comment"]
    for _ in range(300):
        splitter = LineSplitter()
        got = [line for part in pieces(TEXT, rng) for line in splitter.lines(part)]
        assert got == want
        assert splitter.rest() == b"last line without newline"  # its "\r" dropped
        assert splitter.rest() == b""  # given once


def test_lines_with_their_ends_add_up_to_the_input() -> None:
    rng = random.Random(5)
    for _ in range(300):
        splitter = LineSplitter()
        got = [line for part in pieces(TEXT, rng) for line in splitter.lines(part, keep_ends=True)]
        assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in got)
        assert b"".join(got) + splitter.rest(keep_ends=True) == TEXT
        assert got[0] == b'data: {"a":1}\r\n'  # CRLF kept: byte offsets stay exact


def test_blocks_hold_whole_lines_only() -> None:
    rng = random.Random(7)
    for _ in range(300):
        splitter = LineSplitter()
        blocks = [splitter.block(part) for part in pieces(TEXT, rng)]
        assert all(not b or b.endswith(b"\n") for b in blocks)
        assert b"".join(blocks) == TEXT[: TEXT.rfind(b"\n") + 1]
        assert splitter.rest(keep_ends=True) == b"last line without newline\r"


def test_a_piece_without_a_newline_waits() -> None:
    splitter = LineSplitter()
    assert splitter.lines(b"abc") == [] and splitter.block(b"def") == b""
    assert splitter.lines(b"\nx") == [b"abcdef"]
    assert splitter.rest() == b"x"


def test_data_events_skip_what_does_not_parse() -> None:
    tail = (
        b'"cut": 1}\n\ndata: {"id":"c1"}\n\ndata: [DONE]\n\ndata: {"usage": {"total_tokens": 3}}\n'
    )
    assert list(data_events(tail)) == [{"id": "c1"}, {"usage": {"total_tokens": 3}}]
    newest = data_events(tail, newest_first=True, having=b'"usage"')
    assert list(newest) == [{"usage": {"total_tokens": 3}}]


def test_usage_is_the_last_event_that_has_one() -> None:
    def event(obj: object) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    tail = (
        event({"choices": [{"delta": {"content": "x"}}], "usage": None})
        + event({"choices": [], "usage": {"prompt_tokens": 2, "total_tokens": 5}})
        + b"data: [DONE]\n\n"
    )
    assert usage_from_tail(tail) == {"prompt_tokens": 2, "total_tokens": 5}
    assert usage_from_tail(event({"choices": [], "usage": None}) + b"data: [DONE]\n\n") is None
    assert usage_from_tail(b"") is None
