"""AWS Lambda entry of the `embeddings` function: API Gateway HTTP API / Function URL via Mangum."""

from mangum import Mangum

from functions.embeddings.app import app

handler = Mangum(app, lifespan="off")
