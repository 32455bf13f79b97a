"""Errors the user can act on.

Every error raised for bad input is a :class:`MedsegError` whose message is one line:
``<where>: <what is wrong> (<what to do>)``. The CLI prints it without a traceback and exits 2.

The classes are defined in :mod:`methods.errors` (the bottom floor, so that objectives raise them too) and
re-exported here unchanged: ``medseg_platform.errors.MedsegError is methods.errors.MedsegError``.
"""

from methods.errors import ConfigError, DataError, MedsegError

__all__ = ["ConfigError", "DataError", "MedsegError"]
