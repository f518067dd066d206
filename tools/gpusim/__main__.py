"""``python -m tools.gpusim``: serve the simulator with uvicorn (see ``--help``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from .app import build_app
    from .config import parse_config

    try:
        config = parse_config(argv)
    except ValueError as exc:
        sys.exit(f"gpusim: {exc}")
    app = build_app(config)
    models = ",".join(config.models)
    print(f"gpusim: http://{config.host}:{config.port}/v1 (models {models})", file=sys.stderr)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=config.access_log,
        lifespan="off",
        # Open streams and "timeout" faults would otherwise hold SIGTERM off for minutes.
        timeout_graceful_shutdown=max(1, round(config.shutdown_grace_s)),
    )


if __name__ == "__main__":
    main()
