"""Errors the user can act on.

Every error raised for bad input is a :class:`MedsegError` whose message is one line:
``<where>: <what is wrong> (<what to do>)``. The CLI prints it without a traceback and exits 2.
"""


class MedsegError(Exception):
    """Base class of user-facing errors (bad input, bad config); the message is one line."""


class DataError(MedsegError):
    """A dataset file, list or folder is missing or malformed."""


class ConfigError(MedsegError):
    """A configuration value or command-line argument is invalid."""
