"""The template as SAM reads it and as CloudFormation gets it, shared by the deploy tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from tests.deploy.test_template import TEMPLATE, ManagedPolicyLoader


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    doc: dict[str, Any] = yaml_parse(TEMPLATE.read_text())
    return doc


@pytest.fixture(scope="module")
def cfn(sam: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation `sam deploy` would submit: CodeUri uploaded to S3, then transformed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        doc = copy.deepcopy(sam)
        doc["Globals"]["Function"]["CodeUri"] = "s3://sam-artifacts/lambda.zip"
        out: dict[str, Any] = transform(doc, {}, ManagedPolicyLoader())
    return out
