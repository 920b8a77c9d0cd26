"""Request parsing that turns every kind of bad input into a 400 with a code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.auth import is_reserved_user_id, is_valid_user_id, storable_text_problem
from server.errors import BadRequest, PayloadTooLarge
from server.keys import CONFIG
from server.validation import uuid_value as uuid_value

#: No request body of the API nests deeper than 2; 32 leaves room and stops
#: deeply nested bodies long before the parser's recursion limit.
MAX_JSON_DEPTH = 32


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body exceeds the limit of {request.app[CONFIG].limits.max_body_bytes} bytes",
            code="payload_too_large",
        ) from None
    if not raw.strip():
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(
            f"the body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    _check_tree(body)
    return body


def _check_tree(body: dict[str, Any]) -> None:
    """Refuse bodies nested too deeply and strings no store can hold (lone
    surrogates, NUL), wherever they sit: keys, values, ignored fields too.

    Iterative, so a body that json.loads accepted cannot overflow the stack here.
    """
    stack: list[tuple[object, str, int]] = [(body, "body", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            problem = storable_text_problem(value)
            if problem is not None:
                raise BadRequest(f"{where} {problem}", code="invalid_field")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(
                f"the body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                problem = storable_text_problem(key)
                if problem is not None:
                    raise BadRequest(f"a field name in {where} {problem}", code="invalid_field")
                stack.append((item, key if where == "body" else f"{where}.{key}", depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def path_uuid(request: web.Request, name: str) -> str:
    return uuid_value(request.match_info[name], name)


def user_ids(body: Mapping[str, Any], field: str, *, min_items: int, max_items: int) -> list[str]:
    if field not in body:
        raise BadRequest(f"{field} is required", code="missing_field")
    value = body[field]
    if not isinstance(value, list):
        raise BadRequest(f"{field} must be a list of user ids", code="invalid_field")
    if len(value) < min_items:
        raise BadRequest(f"{field} must hold at least {min_items} user id(s)", code="invalid_field")
    if len(value) > max_items:
        raise BadRequest(f"{field} may hold at most {max_items} user ids", code="invalid_field")
    for item in value:
        if not isinstance(item, str) or not is_valid_user_id(item):
            raise BadRequest(f"{field} holds an invalid user id: {item!r}", code="invalid_field")
        if is_reserved_user_id(item):
            raise BadRequest(f"{field} holds a reserved user id: {item!r}", code="reserved_id")
    return list(dict.fromkeys(value))


def optional_str(body: Mapping[str, Any], field: str, *, max_length: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", code="invalid_field")
    value = value.strip()
    if len(value) > max_length:
        raise BadRequest(f"{field} may be at most {max_length} characters", code="invalid_field")
    return value or None


def required_choice(body: Mapping[str, Any], field: str, choices: tuple[str, ...]) -> str:
    if field not in body:
        raise BadRequest(f"{field} is required", code="missing_field")
    value = body[field]
    if value not in choices:
        raise BadRequest(f"{field} must be one of {', '.join(choices)}", code="invalid_field")
    return str(value)


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="invalid_query") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", code="invalid_query")
    return value


def query_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time", code="invalid_query") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name} must carry a time zone (e.g. Z)", code="invalid_query")
    try:
        # 0001-01-01T00:00:00+01:00 parses but has no UTC equivalent; stores compare in UTC.
        return value.astimezone(UTC)
    except OverflowError:
        raise BadRequest(
            f"{name} is outside the range of representable times", code="invalid_query"
        ) from None
