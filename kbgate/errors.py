"""Domain exceptions, each with the HTTP status it maps to at the edge.

The CLI prints `str(e)` and exits non-zero; the web layer turns them into JSON,
HTML, an OpenAI-shaped error or an ephemeral Slack message. The base ones live in
indexer.errors (the indexer never imports kbgate) and are re-exported here.
"""
from indexer.errors import BadInput, IndexUnavailable, KBGateError, ModelError, NotFound  # noqa: F401


class ConfigError(KBGateError):
    code = "config_error"


class TooLarge(KBGateError):
    status = 413
    code = "too_large"


class Busy(KBGateError):
    """The model queue is full; retry after `retry_after` seconds."""
    status = 503
    code = "busy"

    def __init__(self, message: str = "the service is busy, try again shortly", retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(KBGateError):
    status = 503
    code = "not_ready"


class EngineUnavailable(KBGateError):
    """The model engine cannot be reached or died (a remote server down, a timeout)."""
    status = 503
    code = "engine_unavailable"

    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


class EngineBadResponse(KBGateError):
    """The model engine answered something that is not a valid reply (names the engine)."""
    status = 502
    code = "engine_bad_response"
