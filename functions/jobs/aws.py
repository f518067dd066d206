"""AWS Lambda entry of the `jobs` function: API Gateway HTTP API via Mangum."""

from mangum import Mangum

from functions.jobs.app import app

handler = Mangum(app, lifespan="off")
