"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class APIError(Exception):
    """An error that is answered to the client in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        h = dict(headers or {})
        if self.retry_after is not None:
            h["Retry-After"] = str(max(1, int(self.retry_after)))
        return JSONResponse(self.body(), status_code=self.status, headers=h)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized(message: str = "Invalid or missing API key.") -> APIError:
    return APIError(401, message, type_="authentication_error", code="invalid_api_key")


def forbidden(message: str, param: str | None = None) -> APIError:
    return APIError(403, message, type_="permission_error", param=param, code="model_not_allowed")


def rate_limited(message: str, retry_after: int) -> APIError:
    return APIError(
        429, message, type_="rate_limit_error", code="rate_limit_exceeded", retry_after=retry_after
    )


def unavailable(message: str, retry_after: int) -> APIError:
    return APIError(
        503, message, type_="service_unavailable", code="no_backend", retry_after=retry_after
    )
