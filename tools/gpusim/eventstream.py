"""``application/vnd.amazon.eventstream`` framing, as SageMaker's response streams use it.

Message = total length (u32 BE), headers length (u32 BE), prelude CRC32 (over those 8
bytes), headers, payload, message CRC32 (over everything before it). Header = 1-byte name
length, name, 1-byte type (7 = string), 2-byte value length, value.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence

STRING = 7


def encode_headers(headers: Sequence[tuple[str, str]]) -> bytes:
    out = b""
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += struct.pack("!B", len(n)) + n + struct.pack("!BH", STRING, len(v)) + v
    return out


def encode_message(headers: Sequence[tuple[str, str]], payload: bytes) -> bytes:
    raw_headers = encode_headers(headers)
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(raw_headers))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + raw_headers + payload
    return message + struct.pack("!I", zlib.crc32(message))


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``data`` (raw bytes of the model's answer)."""
    return encode_message(
        [(":event-type", "PayloadPart"), (":content-type", "application/octet-stream"),
         (":message-type", "event")],
        data,
    )  # fmt: skip


def model_stream_error(message: str, error_code: str = "ModelStreamError") -> bytes:
    """A ``ModelStreamError`` exception event (botocore raises it as an EventStreamError)."""
    return encode_message(
        [(":exception-type", "ModelStreamError"), (":content-type", "application/json"),
         (":message-type", "exception")],
        json.dumps({"Message": message, "ErrorCode": error_code}).encode(),
    )  # fmt: skip
