"""gpusim: a local stand-in for a GPU model server (vLLM-like), faithful on the wire.

``python -m tools.gpusim --help`` lists every knob. Layout:

- ``config``: the knobs (flags and ``GPUSIM_*`` variables);
- ``engine``: capacity, queueing and latency; protocol-agnostic (its docstring has the API
  and the throughput formula); ``text``: deterministic tokens, text and embeddings;
- ``faults``: which request fails and how; ``metrics``: Prometheus text and admin stats;
- ``wire``: ASGI helpers (raw responses, connection aborts); ``runtime``: one simulator's state;
- ``openai_api``: the OpenAI protocol; ``admin``: health, metrics, fault control, stats;
- ``app``: ``build_app(config)`` mounting the protocol modules.
"""

from .app import build_app
from .config import Config, parse_config

__all__ = ["Config", "build_app", "parse_config"]
