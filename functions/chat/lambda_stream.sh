#!/bin/bash
# Lambda Web Adapter entry point of ChatStreamFunction (template.yaml).
#
# The adapter layer's /opt/bootstrap (AWS_LAMBDA_EXEC_WRAPPER) runs this "handler" instead
# of the Python runtime. It serves the same FastAPI app as the buffered chat function on
# 127.0.0.1:$PORT; the adapter forwards Function URL requests to it and, with
# AWS_LWA_INVOKE_MODE=response_stream, streams the SSE body back as it is produced.
set -euo pipefail

TASK_ROOT="${LAMBDA_TASK_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
cd "$TASK_ROOT"
export PATH="$PATH:$TASK_ROOT/bin"
export PYTHONPATH="$TASK_ROOT:/opt/python${LAMBDA_RUNTIME_DIR:+:$LAMBDA_RUNTIME_DIR}"

exec python3 -m uvicorn functions.chat.app:app \
    --host 127.0.0.1 \
    --port "${PORT:-8080}" \
    --loop uvloop \
    --http httptools \
    --log-level "${UVICORN_LOG_LEVEL:-warning}" \
    --no-access-log
