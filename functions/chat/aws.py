"""AWS Lambda entry of the `chat` function: API Gateway HTTP API / Function URL via Mangum."""

from mangum import Mangum

from functions.chat.app import app

handler = Mangum(app, lifespan="off")
