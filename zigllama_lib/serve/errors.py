"""Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}``.

    raise APIError(400, "temperature must be in [0, 2], got 3", param="temperature")

OpenAI's ``type`` values: ``invalid_request_error`` (400, 404, 413, 422),
``authentication_error`` (401), ``server_error`` (500, 503...). ``code`` is a
short machine-readable reason (``context_length_exceeded``,
``model_not_found``, ``invalid_api_key``...) or ``None``.
"""

from __future__ import annotations

_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
          429: "rate_limit_error"}


class APIError(Exception):
    """An HTTP error with OpenAI's JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def unsupported(param: str, detail: str = "") -> APIError:
    """400 for a parameter OpenAI has and this server does not support (yet)."""
    return APIError(400, f"'{param}' is not supported by this server{': ' + detail if detail else ''}",
                    param=param, code="unsupported_parameter")
