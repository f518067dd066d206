"""Chat completions, plain JSON or SSE stream (OpenAI-compatible)."""
