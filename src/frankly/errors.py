"""One error base carrying an HTTP status; domains subclass it."""

from __future__ import annotations


class FranklyError(Exception):
    """An expected failure with a message fit for the client."""

    status_code = 400
    error = "bad_request"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class NotFound(FranklyError):
    status_code = 404
    error = "not_found"


class Conflict(FranklyError):
    status_code = 409
    error = "conflict"


class Unauthorized(FranklyError):
    status_code = 401
    error = "unauthorized"


class Forbidden(FranklyError):
    status_code = 403
    error = "forbidden"


class Invalid(FranklyError):
    status_code = 422
    error = "invalid"


class TooLarge(FranklyError):
    status_code = 413
    error = "too_large"
