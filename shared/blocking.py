"""One thread pool for the blocking SDK calls (boto3, azure-storage, azure-identity).

``asyncio.to_thread`` uses the loop's default executor, which on a 2-vCPU instance has 6
threads: a queue worker with 32 messages in flight, each making a few storage calls of
10-30 ms, then waits for threads rather than for I/O. These calls spend their time
waiting on the network, so a wider pool is cheap. Built on first use, shared by the
process, never at import.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from shared.lifecycle import Singleton

P = ParamSpec("P")
T = TypeVar("T")

WORKERS = 64

_pool = Singleton(
    lambda: ThreadPoolExecutor(WORKERS, thread_name_prefix="blocking-io"),
    close=lambda pool: pool.shutdown(wait=False),  # calls already running finish
)


def executor() -> ThreadPoolExecutor:
    return _pool.get()


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``await asyncio.to_thread(fn, ...)`` on the wide I/O pool. The caller's context
    variables are copied in, as ``to_thread`` does (the storage deadline travels so)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(executor(), call)
