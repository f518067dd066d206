"""The models this deployment routes (OpenAI list shape)."""
