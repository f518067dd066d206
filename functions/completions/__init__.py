"""Text completions (OpenAI-compatible), plain or streamed."""
