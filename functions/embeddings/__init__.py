"""Embeddings (OpenAI-compatible)."""
