"""Async inference jobs: POST /v1/jobs (enqueue) and GET /v1/jobs/{id} (status and result)."""
