"""Scheduled probe: availability and TTFT of every backend, circuits, warm-up (shared/probe)."""
