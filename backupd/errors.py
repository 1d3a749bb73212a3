"""The few exception types backupd raises on purpose.

Each carries a message written for people: what failed, where, and what to do. The CLI prints
``str(error)`` on one line; tracebacks go to debug logs only.
"""

from __future__ import annotations


class BackupdError(Exception):
    """Base class: an expected failure with a message fit for a person."""

    step = "backup"


class ConfigError(BackupdError):
    """The configuration is invalid. ``problems`` holds one line per problem."""

    step = "config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ConnectError(BackupdError):
    """The database could not be reached or refused the login. ``settings`` names the
    variables to look at (``DB_PASSWORD``), after the message; ``bare`` is the message alone."""

    step = "connect"

    def __init__(self, message: str, settings: tuple[str, ...] = ()) -> None:
        self.bare = message
        self.settings = settings
        super().__init__(f"{message} ({', '.join(settings)})" if settings else message)


class DumpError(BackupdError):
    """The dump tool is missing, failed, or exited non-zero."""

    step = "dump"


class StorageError(BackupdError):
    """The bucket or folder refused a read or write."""

    step = "upload"


class QueryError(BackupdError):
    """A statement sent to the database server failed (the login itself worked)."""

    step = "query"


class CoordinationError(BackupdError):
    """A claim on a slot could not be made, read or kept (``COORDINATION=storage``)."""

    step = "claim"


class ClaimLost(CoordinationError):
    """Another replica took this run's slot over: the run is cancelled before it publishes."""


class CoordinationUnsupported(CoordinationError):
    """The store ignores conditional writes, so replicas cannot share a schedule through it."""
