"""docs/dashboards/azure-workbook.json: a workbook (Notebook/1.0) for Application Insights.

The structure is checked against a JSON Schema of the workbook format's item types (text 1,
query 3, parameters 9), then each query for what Application Insights holds: the metric names
the functions record, the tables and columns KQL can read there.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from tests.fixtures.procs import ROOT

WORKBOOK = ROOT / "docs" / "dashboards" / "azure-workbook.json"
TABLES = {"customMetrics", "dependencies", "requests"}
#: Columns of the Application Insights tables the queries may read.
COLUMNS = {
    "customMetrics": {
        "name", "timestamp", "value", "valueCount", "valueSum", "valueMin", "valueMax",
        "customDimensions",
    },
    "dependencies": {"name", "timestamp", "duration", "success", "target", "customDimensions"},
    "requests": {"name", "timestamp", "duration", "success", "resultCode", "customDimensions"},
}  # fmt: skip

IDENT = "^[A-Za-z][A-Za-z0-9_]*$"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "items"],
    "properties": {
        "version": {"const": "Notebook/1.0"},
        "$schema": {"type": "string"},
        "fallbackResourceIds": {"type": "array", "items": {"type": "string"}},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {"oneOf": [{"$ref": "#/$defs/text"}, {"$ref": "#/$defs/query"},
                                {"$ref": "#/$defs/parameters"}]},
        },
    },
    "$defs": {
        "text": {
            "type": "object",
            "required": ["type", "name", "content"],
            "properties": {
                "type": {"const": 1},
                "name": {"type": "string"},
                "content": {"type": "object", "required": ["json"],
                            "properties": {"json": {"type": "string"}}},
            },
        },
        "query": {
            "type": "object",
            "required": ["type", "name", "content"],
            "properties": {
                "type": {"const": 3},
                "name": {"type": "string"},
                "customWidth": {"type": "string", "pattern": "^[0-9]+$"},
                "content": {
                    "type": "object",
                    "required": ["version", "query", "queryType", "resourceType",
                                 "visualization", "title"],
                    "properties": {
                        "version": {"const": "KqlItem/1.0"},
                        "query": {"type": "string", "minLength": 1},
                        "queryType": {"const": 0},
                        "resourceType": {"const": "microsoft.insights/components"},
                        "visualization": {"enum": ["timechart", "barchart", "table", "tiles",
                                                   "piechart", "areachart", "linechart"]},
                        "size": {"enum": [0, 1, 2, 3, 4]},
                        "title": {"type": "string"},
                        "timeContextFromParameter": {"type": "string"},
                    },
                },
            },
        },
        "parameters": {
            "type": "object",
            "required": ["type", "name", "content"],
            "properties": {
                "type": {"const": 9},
                "content": {
                    "type": "object",
                    "required": ["version", "parameters"],
                    "properties": {
                        "version": {"const": "KqlParameterItem/1.0"},
                        "parameters": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "version", "name", "type"],
                                "properties": {
                                    "version": {"const": "KqlParameterItem/1.0"},
                                    "name": {"type": "string", "pattern": IDENT},
                                    "type": {"enum": [1, 2, 4, 5]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def workbook() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(WORKBOOK.read_text())
    return data


def queries(workbook: dict[str, Any]) -> list[dict[str, Any]]:
    return [i["content"] for i in workbook["items"] if i["type"] == 3]


def parameter_names(workbook: dict[str, Any]) -> set[str]:
    return {p["name"] for i in workbook["items"] if i["type"] == 9
            for p in i["content"]["parameters"]}  # fmt: skip


def test_workbook_matches_the_notebook_schema(workbook: dict[str, Any]) -> None:
    jsonschema.validate(workbook, SCHEMA)
    names = [i["name"] for i in workbook["items"]]
    assert len(names) == len(set(names))


def test_schema_refuses_a_broken_workbook(workbook: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(workbook))
    broken["items"][2]["content"]["version"] = "KqlItem/2.0"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_queries_read_app_insights_tables_and_known_parameters(workbook: dict[str, Any]) -> None:
    params = parameter_names(workbook)
    for content in queries(workbook):
        query = content["query"]
        table = query.split("\n", 1)[0].strip()
        assert table in TABLES, query
        for used in re.findall(r"\{(\w+)\}", query):
            assert used in params, (used, content["title"])
        assert content["timeContextFromParameter"] in params
        # brackets and quotes balance (a cheap guard against a broken KQL edit)
        assert query.count("(") == query.count(")"), content["title"]
        assert query.count('"') % 2 == 0, content["title"]
        for column in re.findall(r"\b(value\w*|valueSum|duration|success|resultCode)\b", query):
            assert column in COLUMNS[table], (column, table)


def test_workbook_charts_ttft_tpot_tokens_errors_and_probe(workbook: dict[str, Any]) -> None:
    text = "\n".join(c["query"] for c in queries(workbook))
    for name in (
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.client.token.usage",
        "infer.throttles",
        "infer.circuit.state",
        "infer.probe.availability",
    ):
        assert f'"{name}"' in text, name
    assert 'customDimensions["gen_ai.token.type"]' in text
    assert "countif(success == false)" in text
