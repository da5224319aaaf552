"""The OpenAPI 3.1 description of ``rewardrt serve``, served at ``GET /openapi.json``.

Written by hand next to the request parsers (:mod:`rewardrt.runtime.protocol`) it describes; the tests validate the
server's real responses against these schemas, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_SCORE = {"type": "number", "minimum": 0, "maximum": 1}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: list[str], extra: bool = True) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": extra}


SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj({"error": _STR, "error_type": _STR, "limit": _STR}, ["error", "error_type"]),
    "ScoreRequest": {
        **_obj({"reference": {**_STR, "description": "one reference for every response"},
                "references": {**_STRS, "description": "one reference per response"},
                "responses": _STRS}, ["responses"]),
        "oneOf": [{"required": ["reference"]}, {"required": ["references"]}],
    },
    "ScoreResponse": _obj({"scores": {"type": "array", "items": _SCORE}}, ["scores"], False),
    "RankResponse": _obj({"ranked": {"type": "array", "items": _obj(
        {"index": {"type": "integer"}, "response": _STR, "score": _SCORE}, ["index", "response", "score"], False)}},
        ["ranked"], False),
    "GetRewardRequest": _obj({
        "query": {**_STRS, "description": "prompt + response, as OpenRLHF decodes them"},
        "prompts": {**_STRS, "description": "removed from the start of each query when it is there"},
        "labels": {**_STRS, "description": "the reference answers"}}, ["query", "labels"]),
    "GetRewardResponse": _obj({"rewards": {"type": "array", "items": _SCORE},
                               "scores": {"type": "array", "items": _SCORE},
                               "extra_logs": {"type": "object"}}, ["rewards", "scores", "extra_logs"], False),
    "TEIRerankRequest": _obj({
        "query": {**_STR, "description": "the reference"}, "texts": _STRS,
        "raw_scores": {"type": "boolean", "description": "the head's output before the [0, 1] clamp"},
        "return_text": {"type": "boolean"},
        "truncate": {"type": "boolean", "description": "false: 413 for a pair over max_length"},
        "truncation_direction": {**_STR, "description": "accepted and ignored"}}, ["query", "texts"]),
    "TEIRerankResponse": {"type": "array", "items": _obj(
        {"index": {"type": "integer"}, "score": {"type": "number"}, "text": _STR}, ["index", "score"], False)},
    "CohereRerankRequest": _obj({
        "query": {**_STR, "description": "the reference"},
        "documents": {"type": "array", "items": {"oneOf": [_STR, _obj({"text": _STR}, ["text"])]}},
        "top_n": {"type": "integer", "minimum": 1},
        "return_documents": {"type": "boolean"},
        "truncate": {"type": "boolean", "description": "false: 413 for a pair over max_length"},
        "model": {**_STR, "description": "echoed back; the server has one model"}}, ["query", "documents"]),
    "CohereRerankResponse": _obj({
        "id": _STR, "model": _STR,
        "results": {"type": "array", "items": _obj(
            {"index": {"type": "integer"}, "relevance_score": _SCORE,
             "document": _obj({"text": _STR}, ["text"], False)}, ["index", "relevance_score"], False)}},
        ["id", "model", "results"], False),
    "Health": _obj({"status": {"enum": ["ok", "draining", "shutting_down"]}}, ["status"], False),
    "Info": _obj({"rewardrt_version": _STR, "model": {"type": "object"}, "server": {"type": "object"},
                  "routes": _STRS}, ["rewardrt_version", "model", "server", "routes"], False),
}

_ERRORS = {
    "400": "malformed body (not JSON, empty, too deeply nested)",
    "408": "the body did not arrive within --body-timeout",
    "413": "over a limit (--max-body-bytes, --max-items, --max-chars; max_length with truncate false)",
    "422": "a missing or mistyped field",
    "503": "queue full (Retry-After), or the server is shutting down",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _post(summary: str, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    responses = {"200": _json(response, "scores, highest first where ranked")}
    responses.update({code: _json(_ref("Error"), text) for code, text in _ERRORS.items()})
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {
        "application/json": {"schema": request}}}, "responses": responses}}


def schema(version: str) -> dict[str, Any]:
    """The whole document, for a server of rewardrt ``version``."""
    rerank = _post("rank documents against a query (the reference): TEI shape with 'texts', "
                   "Cohere/Infinity shape with 'documents'",
                   {"oneOf": [_ref("TEIRerankRequest"), _ref("CohereRerankRequest")]},
                   {"oneOf": [_ref("TEIRerankResponse"), _ref("CohereRerankResponse")]})
    return {
        "openapi": "3.1.0",
        "info": {"title": "rewardrt serve", "version": version,
                 "description": "Reference-based reward scores in [0, 1] from an INT8 ONNX model."},
        "paths": {
            "/score": _post("score responses against references", _ref("ScoreRequest"), _ref("ScoreResponse")),
            "/rank": _post("responses with scores, highest first", _ref("ScoreRequest"), _ref("RankResponse")),
            "/get_reward": _post("OpenRLHF remote reward", _ref("GetRewardRequest"), _ref("GetRewardResponse")),
            "/rerank": rerank,
            "/v1/rerank": rerank,
            "/health": {"get": {"summary": "liveness and readiness", "responses": {
                "200": _json(_ref("Health"), "serving"), "503": _json(_ref("Health"), "draining")}}},
            "/info": {"get": {"summary": "model and server settings",
                              "responses": {"200": _json(_ref("Info"), "metadata")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format", "content": {"text/plain": {"schema": _STR}}}}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {
                "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": SCHEMAS},
    }
