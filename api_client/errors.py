"""Errors a person sees: each carries one line that names the problem."""


class QFarmError(Exception):
    """An error with a message fit to show a user as it is, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SpecError(QFarmError):
    """The job specification is invalid; nothing was queued."""


class ServiceUnavailable(QFarmError):
    """The broker, the database or the artifact store cannot be reached."""


class JobNotFound(QFarmError):
    """No job matches the id (or id prefix) given."""
