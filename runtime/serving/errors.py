"""One error tree for the serving runtime.

Core code raises these; only the HTTP layer turns them into a status code and a body in
the dialect of the API that was called (OpenAI, TGI or upstream's ``/chat``).
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of all errors a client can be told about."""

    status = 500
    kind = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ServingError):
    """The request is well formed JSON but asks for something we cannot do."""

    status = 400
    kind = "invalid_request_error"


class UnknownModel(ServingError):
    """The request names a model or adapter this server does not serve."""

    status = 404
    kind = "not_found_error"


class Overloaded(ServingError):
    """The waiting queue is full: the client should retry later."""

    status = 429
    kind = "overloaded"


class NotReady(ServingError):
    """The model is still loading (or failed to load)."""

    status = 503
    kind = "unavailable"


class GenerationFailed(ServingError):
    """Generation itself failed (a backend error, not the client's fault)."""

    status = 500
    kind = "generation_error"
