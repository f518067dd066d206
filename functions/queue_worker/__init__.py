"""Queue-triggered inference: one job per message on `inference-requests` (Storage queue / SQS)."""
