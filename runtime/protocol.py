"""Request bodies of the HTTP routes, checked field by field (no web framework imported here).

Shared by ``rewardrt serve`` (runtime/serve/) and the Ray Serve deployment (integrations/ray/serve.py), so
both accept and refuse the same bodies with the same errors and limits.

Every check raises :class:`RequestError` with the HTTP status, a short error type and one sentence
naming the field or limit, which the app returns as ``{"error": ..., "error_type": ...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rewardrt.runtime.api import check_text
from rewardrt.runtime.chat import StripTokens, strip_prompt


class RequestError(Exception):
    """A request the server refuses: malformed, mistyped, or over a limit."""

    def __init__(self, status: int, error_type: str, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.limit = limit

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "error_type": self.error_type}
        if self.limit is not None:
            body["limit"] = self.limit
        return body


MAX_BODY_BYTES = 8 * 1024 * 1024  # request body size (413 beyond)
MAX_ITEMS = 1024  # texts per list in one request (413 beyond)
MAX_CHARS = 20_000  # characters per text (413 beyond); the model truncates tokens anyway


@dataclass(frozen=True)
class Limits:
    max_items: int = MAX_ITEMS  # texts per list in one request
    max_chars: int = MAX_CHARS  # characters per text


@dataclass(frozen=True)
class Rerank:
    """One rerank request: ``shape`` "tei" (``texts`` in, a bare list out) or "cohere" (``documents``
    in, ``{"results": [...]}`` out, as Cohere's, Infinity's and Jina's rerank APIs)."""

    shape: str
    query: str
    texts: list[str]
    raw_scores: bool = False  # tei
    return_text: bool = False  # tei: "text"; cohere: "document" ({"text"}) in each result
    top_n: int | None = None  # cohere: the n highest results only
    truncate: bool = True  # false: refuse a pair over the model's max_length (413) instead of cutting it
    model: str | None = None  # cohere: echoed back, not used to pick a model


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body; 400 when it is empty, not UTF-8 or not JSON."""
    if not raw.strip():
        raise RequestError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return json.loads(raw.decode("utf-8-sig"))  # RFC 8259: UTF-8 (json.loads alone would guess UTF-16/32)
    except UnicodeDecodeError:
        raise RequestError(400, "invalid_json", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, "invalid_json", f"the request body is not valid JSON: {exc.msg} "
                                                f"(line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise RequestError(400, "invalid_json", "the request body nests JSON too deeply") from None


def too_large(what: str, size: int, limit: int, flag: str) -> RequestError:
    return RequestError(413, "limit_exceeded",
                        f"{what} is {size}; this server accepts at most {limit} (--{flag.replace('_', '-')})",
                        limit=flag)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(422, "validation", f"the request body must be a JSON object, got {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _text(value: Any, name: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise RequestError(422, "validation", f"{name!r} must be a string, got {_kind(value)}")
    if len(value) > limits.max_chars:
        raise too_large(f"{name!r} length in characters", len(value), limits.max_chars, "max_chars")
    try:
        check_text(repr(name), value)  # a JSON "\\ud800" escape decodes to a lone surrogate
    except ValueError as exc:
        raise RequestError(422, "validation", str(exc)) from None
    return value


def _texts(body: dict[str, Any], name: str, limits: Limits) -> list[str]:
    if body.get(name) is None:
        raise RequestError(422, "validation", f"missing field {name!r} (a list of strings)")
    values = body[name]
    if not isinstance(values, list):
        raise RequestError(422, "validation", f"{name!r} must be a list of strings, got {_kind(values)}")
    if len(values) > limits.max_items:
        raise too_large(f"the number of items in {name!r}", len(values), limits.max_items, "max_items")
    return [_text(v, f"{name}[{i}]", limits) for i, v in enumerate(values)]


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(422, "validation", f"{name!r} must be true or false, got {_kind(value)}")
    return value


def parse_score(body: Any, limits: Limits) -> tuple[list[str], list[str]]:
    """/score and /rank: ``{"reference", "responses"}`` or ``{"references", "responses"}``.

    Returns (one reference per response, responses).
    """
    body = _object(body)
    responses = _texts(body, "responses", limits)
    has_one, has_many = body.get("reference") is not None, body.get("references") is not None
    if has_one == has_many:
        raise RequestError(422, "validation", "give exactly one of 'reference' (a string for all "
                                              "responses) or 'references' (one string per response)")
    if has_one:
        return [_text(body["reference"], "reference", limits)] * len(responses), responses
    references = _texts(body, "references", limits)
    if len(references) != len(responses):
        raise RequestError(422, "validation", f"'references' has {len(references)} items for "
                                              f"{len(responses)} responses; give one per response")
    return references, responses


def parse_get_reward(body: Any, limits: Limits, strip_tokens: StripTokens = ()) -> tuple[list[str], list[str]]:
    """/get_reward (OpenRLHF): ``{"query", "prompts", "labels"}`` -> (references, responses).

    Each response is its query with the prompt prefix and ``strip_tokens`` removed (see
    ``rewardrt.runtime.chat.strip_prompt``); ``prompts`` may be omitted (the whole query, minus the tokens, is then
    the response); ``labels`` are the references.
    """
    body = _object(body)
    queries = _texts(body, "query", limits)
    prompts = _texts(body, "prompts", limits) if body.get("prompts") is not None else None
    if body.get("labels") is None:
        raise RequestError(422, "validation", "missing field 'labels' (the reference answers, one per "
                                              "query; set --label_key in OpenRLHF)")
    labels = _texts(body, "labels", limits)
    if prompts is not None and len(prompts) != len(queries):
        raise RequestError(422, "validation", f"'prompts' has {len(prompts)} items for {len(queries)} "
                                              "queries; give one per query")
    if len(labels) != len(queries):
        raise RequestError(422, "validation", f"'labels' has {len(labels)} items for {len(queries)} "
                                              "queries; give one per query")
    if prompts is None:
        return labels, [strip_prompt(q, None, strip_tokens) for q in queries]
    return labels, [strip_prompt(q, p, strip_tokens) for q, p in zip(queries, prompts)]


def _documents(body: dict[str, Any], limits: Limits) -> list[str]:
    values = body.get("documents")
    if not isinstance(values, list):
        raise RequestError(422, "validation", "'documents' must be a list of strings or of objects with "
                                              f"'text', got {_kind(values)}")
    if len(values) > limits.max_items:
        raise too_large("the number of items in 'documents'", len(values), limits.max_items, "max_items")
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, dict):
            if "text" not in value:
                raise RequestError(422, "validation", f"'documents[{i}]' is an object without 'text'")
            value = value["text"]
            texts.append(_text(value, f"documents[{i}].text", limits))
        else:
            texts.append(_text(value, f"documents[{i}]", limits))
    return texts


def _top_n(body: dict[str, Any], count: int) -> int | None:
    value = body.get("top_n")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(422, "validation", f"'top_n' must be an integer >= 1, got {value!r}")
    return min(value, count)


def parse_rerank(body: Any, limits: Limits) -> Rerank:
    """/rerank and /v1/rerank. Two request shapes, told apart by their list field:

    - TEI: ``{"query", "texts", "raw_scores"?, "return_text"?, "truncate"?}`` (a bare list back);
    - Cohere / Infinity / Jina: ``{"query", "documents", "top_n"?, "return_documents"?, "model"?,
      "truncate"?}``, documents as strings or ``{"text": ...}`` objects (``{"results": [...]}`` back).

    The query is the reference. ``truncate: false`` refuses a pair over the model's max_length; by
    default (absent or true) such a pair keeps the reference and the end of the text (the runtime's
    truncation). ``truncation_direction`` is accepted and ignored.
    """
    body = _object(body)
    if "query" not in body:
        raise RequestError(422, "validation", "missing field 'query' (the reference text)")
    query = _text(body["query"], "query", limits)
    has_texts, has_docs = body.get("texts") is not None, body.get("documents") is not None
    if has_texts == has_docs:
        raise RequestError(422, "validation", "give exactly one of 'texts' (TEI) or 'documents' "
                                              "(Cohere/Infinity): the texts to rank against 'query'")
    truncate = body.get("truncate", True)
    if truncate is None:
        truncate = True
    if not isinstance(truncate, bool):
        raise RequestError(422, "validation", f"'truncate' must be true or false, got {_kind(truncate)}")
    if has_texts:
        texts = _texts(body, "texts", limits)
        if not texts:
            raise RequestError(422, "validation", "'texts' cannot be empty")
        return Rerank("tei", query, texts, raw_scores=_flag(body, "raw_scores"),
                      return_text=_flag(body, "return_text"), truncate=truncate)
    texts = _documents(body, limits)
    if not texts:
        raise RequestError(422, "validation", "'documents' cannot be empty")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(422, "validation", f"'model' must be a string, got {_kind(model)}")
    return Rerank("cohere", query, texts, return_text=_flag(body, "return_documents"),
                  top_n=_top_n(body, len(texts)), truncate=truncate, model=model)


def too_long(field: str, items: list[int], max_length: int) -> RequestError:
    """413 for ``truncate: false`` and pairs over the model's max_length (as TEI refuses them)."""
    shown = ", ".join(f"{field}[{i}]" for i in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    return RequestError(413, "validation", f"{shown} with the query exceed{'s' if len(items) == 1 else ''} "
                                           f"the model's max_length of {max_length} tokens and 'truncate' "
                                           "is false; shorten them or allow truncation", limit="max_length")
