"""Errors the user can act on, defined at the bottom floor so that every floor raises the same classes.

Every error raised for bad configuration or bad data is a :class:`MedsegError` whose message is one line:
``<where>: <what is wrong> (<what to do>)``. The Tune layer treats a :class:`MedsegError` as deterministic
(an application error: the trial is marked errored, not retried), and the command line prints it without a
traceback and exits 2. :mod:`medseg_platform.errors` re-exports these classes (the same objects, so
``isinstance`` agrees on every floor).

:class:`ConfigError` and :class:`DataError` also derive from :class:`ValueError`, the type these errors had
before they were named, so code that catches ``ValueError`` still catches them.
"""


class MedsegError(Exception):
    """Base class of user-facing errors (bad input, bad config); the message is one line."""


class ConfigError(MedsegError, ValueError):
    """A configuration value or command-line argument is invalid."""


class DataError(MedsegError, ValueError):
    """A dataset file, list or folder is missing or malformed, or a batch does not fit the objective."""
