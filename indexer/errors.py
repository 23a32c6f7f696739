"""The indexer's errors, each with the HTTP status it maps to at the edge.

The application re-exports them beside its own: it builds on the indexer,
never the reverse, so the base classes live here.
"""


class KBGateError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(KBGateError):
    status = 400
    code = "bad_request"


class NotFound(KBGateError):
    status = 404
    code = "not_found"


class ModelError(KBGateError):
    """Model provisioning or loading failed; the message says what to do."""
    code = "model_error"


class IndexUnavailable(KBGateError):
    """The index is missing, corrupt, or built with another embedder."""
    status = 503
    code = "index_error"
