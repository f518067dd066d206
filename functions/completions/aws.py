"""AWS Lambda entry of the `completions` function: HTTP API / Function URL via Mangum."""

from mangum import Mangum

from functions.completions.app import app

handler = Mangum(app, lifespan="off")
