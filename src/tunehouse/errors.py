"""One exception type per user-facing failure.

Each carries what OpenAI's error envelope needs (HTTP status, `type`, `code`, `param`); the API maps
them to `{"error": {...}}` in one place (`tunehouse.api.errors`) and the CLI prints the message
without a traceback. Services raise these and nothing else for problems the user can fix.
"""

from __future__ import annotations


class TunehouseError(Exception):
    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str | None]:
        return {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}


class InvalidRequest(TunehouseError):
    """The request is malformed or names values out of range (400)."""

    code = "invalid_request"


class InvalidValue(TunehouseError):
    """A field has a value that is well-formed but not acceptable (400), e.g. an unknown purpose."""

    code = "invalid_value"


class AuthenticationFailed(TunehouseError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(TunehouseError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(TunehouseError):
    """The object is in a state that forbids the operation (409), e.g. cancelling a finished job."""

    status_code = 409
    code = "conflict"


class Forbidden(TunehouseError):
    """A request refused for where it comes from (a foreign Host or Origin), not for who sent it (403)."""

    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class PayloadTooLarge(TunehouseError):
    status_code = 413
    code = "file_too_large"


class TrainingDiverged(TunehouseError):
    """A job's loss became NaN or infinite: it fails, and no model is published."""

    code = "training_diverged"


class InsufficientStorage(TunehouseError):
    """The server's disk is full (507): nothing was stored, the request may be retried later."""

    status_code = 507
    error_type = "server_error"
    code = "insufficient_storage"


class ServerBusy(TunehouseError):
    """Too many generations are already waiting for the engine (429): nothing was done; retry later.

    OpenAI's rate-limit envelope, so the SDK raises RateLimitError and retries with backoff."""

    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"


class UnprocessableEntity(TunehouseError):
    status_code = 422
    code = "unprocessable_entity"


class ModelLoadError(TunehouseError):
    """A registered model's weights could not be found or loaded."""

    status_code = 400
    code = "model_load_error"


class DataValidationError(TunehouseError):
    """A training or validation file does not meet the format rules; the message names the line."""

    code = "invalid_training_file"


class OutOfMemoryRisk(TunehouseError):
    """Training would not fit in memory; the message says what to lower."""

    code = "out_of_memory"


class ExportRefused(UnprocessableEntity):
    """A model cannot be exported in the asked format without breaking it; the message says why and what works."""

    code = "export_refused"


class ExportVerificationFailed(TunehouseError):
    """An export was written but its check failed (a bug in the exporter, not the user's mistake)."""

    status_code = 500
    error_type = "server_error"
    code = "export_verification_failed"


class MigrationFailed(TunehouseError):
    """`tunehouse migrate` cannot go on with a job: the source server is unreachable or refuses, or
    a job's files cannot be fetched. The message names the job and what to pass or fix."""

    status_code = 502
    error_type = "server_error"
    code = "migration_failed"


class ServingBackendUnavailable(TunehouseError):
    """The serving backend (a vLLM server tunehouse runs, `serve/vllm_backend.py`) did not start or
    stopped answering (503): the message says why and where its log is; the request may be retried."""

    status_code = 503
    error_type = "server_error"
    code = "serving_backend_unavailable"
