"""AWS Lambda entry of the `models` function: API Gateway HTTP API / Function URL via Mangum."""

from mangum import Mangum

from functions.models.app import app

handler = Mangum(app, lifespan="off")
