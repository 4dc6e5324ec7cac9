"""The service's error for an operation it cannot do (a subclass of ``common.errors.UserError``,
the one type the CLI reports as a user error)."""

from common.errors import InvalidInput, NotFound, UserError


class FreshenError(UserError, RuntimeError):
    """An operation of the service could not be done as asked; the message says why and what
    to do."""


__all__ = ["FreshenError", "InvalidInput", "NotFound", "UserError"]
