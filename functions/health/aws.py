"""AWS Lambda entry of the `health` function: API Gateway HTTP API / Function URL via Mangum."""

from mangum import Mangum

from functions.health.app import app

handler = Mangum(app, lifespan="off")
