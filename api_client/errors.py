"""Errors a person sees: each carries one line that names the problem."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def printable(text: str) -> str:
    """`text` with control characters escaped, for logs and terminals: a model
    path or user name holding a newline or an ANSI escape cannot forge lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class QFarmError(Exception):
    """An error with a message fit to show a user as it is, on one line."""

    def __init__(self, message: str):
        super().__init__(printable(" ".join(str(message).split())))


class SpecError(QFarmError):
    """The job specification is invalid; nothing was queued."""


class ServiceUnavailable(QFarmError):
    """The broker, the database or the artifact store cannot be reached."""


class JobNotFound(QFarmError):
    """No job matches the id (or id prefix) given."""
