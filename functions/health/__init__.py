"""Liveness (/healthz) and readiness (/readyz: settings valid, a backend answers)."""
