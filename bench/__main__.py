"""`make bench`: run every benchmark in turn; each writes JSON + PNG to bench/results/."""

from __future__ import annotations

import importlib
import sys

BENCHES = [
    "bench.coldstart",
    "bench.overhead",
    "bench.stream_load",
    "bench.faults",
    "bench.capacity",
    "bench.storage_cpu",
    "bench.queue_all",
    "bench.batch",
    "bench.cache",
    "bench.controls",
    "bench.telemetry",
    "bench.revisions",
]


def main() -> None:
    only = sys.argv[1:]
    for name in BENCHES:
        if only and name.split(".")[-1] not in only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"== {name}: not present, skipped")
                continue
            raise
        print(f"== {name}")
        sys.argv = [name]
        module.main()


if __name__ == "__main__":
    main()
