"""The one family of exceptions for a request that cannot be done as asked: bad input (a file,
a record, a field, a setting), something asked for that does not exist, a model that cannot
be loaded, a registry or service state that forbids the operation. The message says what and
what to do. The CLI prints it and exits 2; any other exception is a bug and keeps its
traceback.

Each layer raises the subclass that names its domain (``ModelLoadError``, ``RegistryError``,
``FreshenError``) or one of the two generic ones below; both also derive from the built-in
exception a Python caller would expect (``ValueError``, ``LookupError``)."""

from __future__ import annotations


class UserError(Exception):
    """A request that cannot be done as asked; ``str(exc)`` is the message for the user."""

    def __str__(self) -> str:  # KeyError-like subclasses would otherwise print the repr
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InvalidInput(UserError, ValueError):
    """Bad input: a file, a record, a field or a setting; the message names it and why."""


class NotFound(UserError, LookupError):
    """Something asked for by name (a change, a version, a file) does not exist."""


def read_user_file(path, what: str) -> str:
    """The text of a file a user named (a feed, facts, a policy, a config): ``NotFound`` when it
    is not there, ``InvalidInput`` when it is not UTF-8 text; ``what`` names its role."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise NotFound(f"{what} {p} does not exist" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} {p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_user_json(path, what: str) -> dict:
    """The JSON object in a file a user named (a policy, a gate config, hyperparameters), with
    ``read_user_file``'s errors, and ``InvalidInput`` when it is not JSON or not an object."""
    import json

    try:
        d = json.loads(read_user_file(path, what))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} {path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(d, dict):
        raise InvalidInput(f"{what} {path}: expected a JSON object, got {type(d).__name__}")
    return d
