"""Blob-triggered batch inference (OpenAI Batch format) that keeps a GPU endpoint busy.

Entry points: ``get_batch().start(path, ctx)`` for a new ``batch-in/<name>.jsonl`` and
``get_batch().resume(message, ctx)`` for a ``batch_shard`` queue message. docs/batch.md has
the flow, the formats and the guarantees.
"""

from shared.batch.runner import MESSAGE_KIND, Batch, get_batch, invocation_context

__all__ = ["MESSAGE_KIND", "Batch", "get_batch", "invocation_context"]
