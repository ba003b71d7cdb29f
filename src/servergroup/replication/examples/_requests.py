"""The examples' request lines: one JSON object per line, one JSON object back."""

from __future__ import annotations

import json
from typing import Any


class BadRequest(Exception):
    """A request the service cannot answer; its message goes back to the client."""


def parse(request: bytes) -> dict[str, Any]:
    """The request line as a JSON object with a string `op`."""
    try:
        body = json.loads(request)
    except ValueError:
        raise BadRequest("the request is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("op"), str):
        raise BadRequest('the request is not an object with an "op"')
    return body


def text(body: dict[str, Any], field: str, limit: int) -> bytes:
    """A string field of the request, as UTF-8 of at most `limit` bytes."""
    value = body.get(field)
    if not isinstance(value, str):
        raise BadRequest(f'"{field}" must be a string')
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > limit:
        raise BadRequest(f'"{field}" is over {limit} bytes of UTF-8')
    return raw


def reply(**fields: Any) -> bytes:
    return json.dumps({"ok": True, **fields}, separators=(",", ":")).encode()


def refuse(reason: str) -> bytes:
    return json.dumps({"ok": False, "error": reason}, separators=(",", ":")).encode()
