"""The one closed hierarchy of errors gemma_server raises on purpose.

Every error a user can cause carries the HTTP status it should be rendered with, so the API
layer maps errors to responses in exactly one place. Errors raised while the server starts
(bad checkpoint, bad config) are `ConfigurationError`s: the CLI prints their message and exits.
"""

from __future__ import annotations


class GemmaServerError(Exception):
    """Base class: `status` is the HTTP status code the API layer renders."""

    status: int = 500
    code: str = "internal_error"


class ConfigurationError(GemmaServerError):
    """A setting, config file or model config that cannot be served as given."""

    status = 500
    code = "configuration_error"


class CheckpointError(ConfigurationError):
    """A checkpoint directory that is missing files or tensors, or has the wrong shapes."""

    code = "checkpoint_error"


class InvalidRequest(GemmaServerError):
    """The request is well-formed JSON but asks for something we cannot do."""

    status = 400
    code = "invalid_request"


class TemplateError(InvalidRequest):
    """A conversation the chat template cannot render (bad roles, bad order, empty)."""

    code = "invalid_conversation"


class ContextTooLong(InvalidRequest):
    """Prompt plus requested tokens exceed the model's limits."""

    code = "context_length_exceeded"


class ModelNotFound(GemmaServerError):
    status = 404
    code = "model_not_found"


class Unauthorized(GemmaServerError):
    status = 401
    code = "unauthorized"


class Overloaded(GemmaServerError):
    status = 429
    code = "overloaded"


class EngineFailure(GemmaServerError):
    status = 500
    code = "engine_failure"
