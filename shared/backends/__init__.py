"""Model endpoint backends. Each kind lives in its own module and imports its SDK lazily."""

import sys

# httpx's __init__ tries to import its command-line tool (click, pygments, rich) and keeps
# whatever it got before failing. uvicorn brings click into both deployment artifacts, so
# that attempt costs ~40 ms of every cold start for a CLI no function uses. A None entry
# makes that one optional import fail at once; nothing else changes. It is set here, in the
# package, so that it holds for every backend module that imports httpx.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from shared.backends.base import Backend, ByteStream, Result  # noqa: E402

__all__ = ["Backend", "ByteStream", "Result"]
