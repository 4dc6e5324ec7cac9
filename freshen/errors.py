"""The one error type the service raises for an operation it cannot do."""


class FreshenError(RuntimeError):
    """An operation could not be done as asked; the message says why and what to do. The CLI
    prints it and exits 2 (other exceptions are bugs and keep their traceback)."""
