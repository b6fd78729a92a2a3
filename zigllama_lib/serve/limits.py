"""The server's resource limits, and the body parser that enforces the JSON ones.

    body = parse_json_body(raw)      # dict, or APIError 400/413 naming the limit

Limits (all refusals are OpenAI-style 4xx JSON, or 503 with ``Retry-After`` for overload):

* ``MAX_BODY_BYTES`` = 2 MiB per request body (413);
* ``MAX_JSON_DEPTH`` = 64 nested arrays/objects (400; deeper JSON would hit Python's recursion limit);
* ``MAX_INT_DIGITS`` = 40 digits per JSON integer (400; ``1e400``-sized ints overflow floats);
  ``NaN``/``Infinity`` are not JSON (400);
* ``MAX_PROMPT_CHARS`` = 1,000,000 characters of prompt or message text (400, before tokenizing);
* ``MAX_MESSAGES`` = 1,000 messages per chat request (400);
* ``MAX_QUEUE`` = 64 generation requests queued or running (one more: 503);
* ``MAX_REQUEST_SECONDS`` = 600 s of generation per request (then it is cancelled).
"""

from __future__ import annotations

import json

from .errors import APIError

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 40
MAX_PROMPT_CHARS = 1_000_000
MAX_MESSAGES = 1_000
MAX_QUEUE = 64
MAX_REQUEST_SECONDS = 600.0


def _json_depth(raw: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON text, ignoring brackets inside strings."""
    depth = deepest = 0
    in_str = escaped = False
    for c in raw:
        if in_str:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _parse_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise APIError(400, f"the request body has an integer of {len(s)} digits (at most {MAX_INT_DIGITS})")
    return int(s)


def _parse_constant(name: str):
    raise APIError(400, f"the request body is not valid JSON: {name} is not a JSON number")


def parse_json_body(raw: bytes, max_bytes: int = MAX_BODY_BYTES) -> dict:
    """``raw`` as a JSON object, within the size, depth and number limits above."""
    if len(raw) > max_bytes:
        raise APIError(413, f"request body of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8: {e}") from None
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise APIError(400, f"the request body nests arrays/objects {depth} deep (at most {MAX_JSON_DEPTH})")
    try:
        body = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, f"the request body nests too deeply (at most {MAX_JSON_DEPTH})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body
